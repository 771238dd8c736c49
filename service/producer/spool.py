"""The producer's spool: events Redis could not take, kept on local disk until it can.

Layout. A spool is one directory of segment files, `seg-<ns>-<pid>-<rand>.jsonl`, named so
that they sort in the order they were begun. A segment holds newline-delimited event JSON,
exactly the bytes the client would have sent. A process only ever appends to a segment it
began itself; it never reopens an older one.

Durability (the fsync policy). `append` writes a batch with one `write(2)` and then
`fdatasync`s the segment before it returns; the client counts the batch's events as spooled
(and `capture` returns their ids) only after that. A new segment is made under a temporary
name, locked, renamed into place and the directory is fsynced, so a segment that has events
is always found again after a crash of the process or the machine. A write that fails half
way (a full disk) is cut back to the last whole batch, so a segment never holds a torn line
that was reported spooled; a torn last line left by a crash mid-write is skipped on replay
(its events were never reported spooled).

Ownership. The segment a process writes is `flock`ed by it while open. Replay takes only
segments it can lock: closed ones, and those of a process that died (the kernel released its
lock). So several processes may share one spool directory, and a restarted process replays
what an earlier one left. A segment is deleted only after Redis acknowledged every batch of
it; a replay cut short is repeated in full, which is safe: every spooled event carries its
id, and each replayed batch goes under a task id derived from its segment and position.

Trust. The directory is made 0700, and a spool whose directory is writable by group or
others, or not owned by the process's user, is refused (SpoolRefused, a SpoolError: the
client says so once and behaves as without a spool): whoever could write there could plant
events that a replay would deliver as this producer's. Segments are opened without
following symlinks, and only regular files are read.

Replay. A segment is replayed in batches of at most REPLAY_MAX_EVENTS events (whatever the
client's own batch size) under task ids that name the lines they hold,
`spool-<segment>-<first>-<last>`: a batch replayed twice is queued once, and a replay cut
short and begun again by a process with other limits never takes a batch for one queued
before. A line that is not JSON (a damaged disk) goes alone, as it is, under its own task
id: the worker sets it aside in the dead letter with its reason, and the rest of its
segment is stored.

Bound. The spool holds at most `max_bytes` (all segments in the directory, as this process
last saw them). An event that does not fit is not written: the caller drops and counts it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import msgspec

from service.errors import AuditqError

logger = logging.getLogger(__name__)

SEGMENT_MAX_BYTES: Final = 4 * 1024 * 1024  # bytes; a segment is closed past this size
DEFAULT_MAX_BYTES: Final = 1024 * 1024 * 1024  # bytes; Settings.spool_max_bytes overrides
SEGMENT_PREFIX: Final = "seg-"
SEGMENT_SUFFIX: Final = ".jsonl"
STAGING_PREFIX: Final = ".staging-"
STAGING_GRACE_S: Final = 60.0  # seconds; a staging file younger than this may be a live writer's
DIRECTORY_MODE: Final = 0o700
REPLAY_MAX_EVENTS: Final = 500  # events per replayed batch, the same for every process

_write = os.write  # replaced in tests to play a full disk
_sync = os.fdatasync


class SpoolError(AuditqError):
    """The spool cannot be written (read-only, full disk, not a directory)."""


class SpoolRefused(SpoolError):
    """The spool's directory is not safe: writable by others, or owned by another user."""


class Segment:
    """A closed segment this process holds locked for replay."""

    def __init__(self, spool: Spool, path: Path, fd: int, lines: list[bytes]) -> None:
        self.path = path
        self.lines = lines  # the whole events, in the order they were spooled
        self._spool = spool
        self._fd = fd

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(SEGMENT_SUFFIX)

    def delete(self) -> None:
        """Remove the segment: every event of it is in Redis."""
        size = os.fstat(self._fd).st_size
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._spool._forget(size)

    def release(self) -> None:
        """Unlock the segment (after delete, or to leave it for a later replay)."""
        os.close(self._fd)


class Spool:
    """Append-only segments of event JSON in one directory; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_max_bytes: int = SEGMENT_MAX_BYTES,
    ) -> None:
        """Describe a spool in `directory`; nothing is touched on disk until it is used."""
        if max_bytes < 1 or segment_max_bytes < 1:
            raise ValueError("max_bytes and segment_max_bytes must be at least 1")
        self.directory = directory
        self.max_bytes = max_bytes
        self._segment_max = segment_max_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None  # the segment this process appends to, locked
        self._path: Path | None = None
        self._size = 0  # bytes in the current segment
        self._used: int | None = None  # bytes of every segment in the directory; None: unknown

    # Writing.

    def append(self, lines: Sequence[bytes]) -> int:
        """Append whole events (no newline inside) durably; return how many fit.

        Events are taken in order until the next would pass `max_bytes`; the rest are not
        written. Raises SpoolError when the spool cannot be written at all.
        """
        with self._lock:
            used = self._used_bytes()
            taken = 0
            size = 0
            for line in lines:
                if used + size + len(line) + 1 > self.max_bytes:
                    break
                taken += 1
                size += len(line) + 1
            if not taken:
                return 0
            chunk = b"".join(line + b"\n" for line in lines[:taken])
            fd = self._segment_for_append()
            start = self._size
            try:
                view = memoryview(chunk)
                while view:
                    view = view[_write(fd, view) :]
                _sync(fd)
            except OSError as exc:
                # Never leave a torn batch that a replay would half-deliver: cut it back. When
                # even that fails, the segment ends in a torn line: seal it (a replay skips a
                # last line without its newline) so no later batch is fused onto it.
                try:
                    os.ftruncate(fd, start)
                    os.lseek(fd, start, os.SEEK_SET)
                except OSError:
                    self._close_current()
                raise SpoolError(f"cannot write the spool at {self.directory}: {exc}") from exc
            self._size += len(chunk)
            self._used = used + len(chunk)
            if self._size >= self._segment_max:
                self._close_current()
            return taken

    def rotate(self) -> None:
        """Close the current segment so that a replay may take it."""
        with self._lock:
            self._close_current()

    def close(self) -> None:
        """Close (and unlock) the current segment; spooled events stay for a later replay."""
        self.rotate()

    @property
    def current_bytes(self) -> int:
        """Bytes in the segment this process is appending to (0: none open)."""
        return self._size if self._fd is not None else 0

    # Replaying.

    def closed_segments(self) -> list[Path]:
        """Segments in the directory, oldest first, except the one this process appends to."""
        with self._lock:
            return [p for p in self._segments() if p != self._path]

    def has_segments(self) -> bool:
        """Whether any segment (this process's or another's) is in the directory."""
        with self._lock:
            return bool(self._segments())

    def claim(self, path: Path) -> Segment | None:
        """Lock a closed segment and read its whole events; None when another process owns it."""
        try:
            # Never through a symlink, never blocking on a FIFO planted under a segment's name.
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None  # replayed and deleted by another process meanwhile
        except OSError as exc:  # ELOOP: a symlink
            logger.error("the spool segment %s is skipped: %s", path, exc)
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            logger.error("the spool segment %s is skipped: it is not a regular file", path)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.fstat(fd).st_nlink == 0:  # deleted between our open and our lock
                os.close(fd)
                return None
            with os.fdopen(os.dup(fd), "rb") as file:
                data = file.read()
        except BaseException:
            os.close(fd)
            raise
        lines = data.split(b"\n")
        # The last piece is empty after a whole line; otherwise it is a line torn by a crash,
        # whose events were never reported spooled.
        return Segment(self, path, fd, [line for line in lines[:-1] if line])

    def refresh(self) -> int:
        """Measure the directory again (other processes add and replay); return bytes used."""
        with self._lock:
            self._used = None
            return self._used_bytes()

    def sweep_staging(self) -> None:
        """Remove staging files left by a process that died while making a segment.

        A younger one may be a live writer's between its create and its lock: taking it
        would fail that writer's lock and refuse the events it was spooling."""
        with contextlib.suppress(OSError):
            for path in self.directory.glob(STAGING_PREFIX + "*"):
                try:
                    if time.time() - os.lstat(path).st_mtime < STAGING_GRACE_S:
                        continue
                except FileNotFoundError:
                    continue
                claimed = self.claim(path)
                if claimed is not None:
                    if not claimed.lines:
                        claimed.delete()
                    claimed.release()

    # Inside.

    def check_directory(self) -> bool:
        """Refuse a directory others could write to (SpoolRefused); False when it is absent."""
        try:
            info = os.stat(self.directory)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SpoolError(f"cannot use the spool at {self.directory}: {exc}") from exc
        if not stat.S_ISDIR(info.st_mode):
            raise SpoolError(f"cannot use the spool at {self.directory}: Not a directory")
        if info.st_uid != os.geteuid():
            raise SpoolRefused(
                f"the spool at {self.directory} is refused: it is owned by uid {info.st_uid},"
                f" not by this process's user (uid {os.geteuid()})"
            )
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise SpoolRefused(
                f"the spool at {self.directory} is refused: its mode"
                f" {stat.S_IMODE(info.st_mode):04o} lets group or others write to it"
                f" (make it {DIRECTORY_MODE:04o})"
            )
        return True

    def _segments(self) -> list[Path]:
        if not self.check_directory():
            return []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SpoolError(f"cannot use the spool at {self.directory}: {exc}") from exc
        return [
            self.directory / name
            for name in sorted(names)
            if name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)
        ]

    def _used_bytes(self) -> int:
        if self._used is None:
            total = 0
            for path in self._segments():
                with contextlib.suppress(FileNotFoundError):
                    total += os.lstat(path).st_size
            self._used = total
        return self._used

    def _forget(self, size: int) -> None:
        with self._lock:
            if self._used is not None:
                self._used = max(0, self._used - size)

    def _segment_for_append(self) -> int:
        if self._fd is not None:
            return self._fd
        try:
            self.directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot write the spool at {self.directory}: {exc}") from exc
        self.check_directory()
        try:
            name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(3)}"
            staging = self.directory / f"{STAGING_PREFIX}{name}"
            final = self.directory / f"{SEGMENT_PREFIX}{name}{SEGMENT_SUFFIX}"
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            try:
                # Locked before it has its final name: a replayer never sees it unlocked.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(staging, final)
                _fsync_directory(self.directory)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    staging.unlink()
                raise
        except OSError as exc:
            raise SpoolError(f"cannot write the spool at {self.directory}: {exc}") from exc
        self._fd, self._path, self._size = fd, final, 0
        return fd

    def _close_current(self) -> None:
        fd, path = self._fd, self._path
        self._fd, self._path, self._size = None, None, 0
        if fd is None:
            return
        try:
            if os.fstat(fd).st_size == 0 and path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()  # nothing was ever spooled in it
        finally:
            os.close(fd)


@dataclasses.dataclass(frozen=True)
class ReplayBatch:
    """Spooled events to enqueue as one task."""

    task_id: str
    payload: bytes  # a JSON array of events, or one line that is not JSON, as it is
    count: int  # lines


def replay_batches(
    segment: str, lines: Sequence[bytes], *, max_bytes: int, max_events: int = REPLAY_MAX_EVENTS
) -> Iterator[ReplayBatch]:
    """Cut a segment's lines into batches whose task ids name their lines (see the module
    docstring); a line that is not JSON makes a batch of its own, as it is."""
    first = 0
    batch: list[bytes] = []
    size = 2  # the brackets

    def flush() -> ReplayBatch:
        last = first + len(batch) - 1
        payload = b"[" + b",".join(batch) + b"]"
        return ReplayBatch(f"spool-{segment}-{first}-{last}", payload, len(batch))

    for index, line in enumerate(lines):
        corrupt = not _is_json(line)
        if batch and (corrupt or len(batch) >= max_events or size + len(line) + 1 > max_bytes):
            yield flush()
            batch, size = [], 2
        if corrupt:
            yield ReplayBatch(f"spool-{segment}-{index}-corrupt", line, 1)
            first = index + 1
            continue
        if not batch:
            first = index
        batch.append(line)
        size += len(line) + 1
    if batch:
        yield flush()


_json = msgspec.json.Decoder()


def _is_json(line: bytes) -> bool:
    try:
        _json.decode(line)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
