"""The jobs' contract: how events become arq jobs, shared by every producer and the worker,
and the provenance tags that vouch for the API's jobs."""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import msgspec

from service.redaction import redact_escapes, redact_sensitive, redact_sensitive_in_string

JOB_FUNCTION = "store_events"  # the worker's job; its one argument is the events' JSON text
PROVENANCE_SECRET = "provenance"  # the api_secret row the API and the worker share
RAW_BYTES_PREFIX = "base64:"  # a job argument that was not UTF-8: its bytes, base64-encoded


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Who the API's jobs come from (`via`, e.g. http:<token name>), and the key that vouches."""

    via: str
    key: bytes
    task_prefix: str = "api"


def provenance_tag(key: bytes, *, task_id: str, via: str, payload: bytes) -> str:
    """The HMAC that vouches for `via` on this one job (its id and its exact payload)."""
    message = b"\0".join((task_id.encode(), via.encode(), hashlib.sha256(payload).digest()))
    return hmac.new(key, message, hashlib.sha256).hexdigest()


_encoder = msgspec.json.Encoder(enc_hook=str)  # exceptions in arq results become their text
_decoder = msgspec.json.Decoder()


def serialize_job(data: dict[str, Any], extra_keys: frozenset[str] = frozenset()) -> bytes:
    """Encode an arq job or result as JSON, the format the Lua script writes.

    A result ("s" set) never keeps the job's raw argument, which holds a foreign producer's
    secrets as sent: a successful one drops it (the result carries the redacted events), a
    failed one (a timeout, arq's own failure) keeps it redacted, for the task view."""
    if "s" in data:
        if data["s"]:
            data = {**data, "a": []}
        else:
            args = [
                redact_job_argument(a, extra_keys) if isinstance(a, str) else a
                for a in data.get("a") or ()
            ]
            data = {**data, "a": args}
            if data.get("r") is not None:
                data["r"] = redact_sensitive_in_string(str(data["r"]), extra_keys)
    return _encoder.encode(data)


def job_serializer(extra_keys: frozenset[str]) -> Callable[[dict[str, Any]], bytes]:
    """serialize_job with the configured extra keys (Settings.redact_extra_keys), for arq."""
    return functools.partial(serialize_job, extra_keys=extra_keys)


def redact_job_argument(text: str, extra_keys: frozenset[str] = frozenset()) -> str:
    """A job's argument (events' JSON text) redacted: as JSON when it is, else as text; the
    text itself when nothing in it needed redaction."""
    if text.startswith(RAW_BYTES_PREFIX):
        return redact_raw_bytes(text, extra_keys)
    try:
        value = _decoder.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return redact_sensitive_in_string(text, extra_keys)
    redacted = redact_sensitive(value, extra_keys)
    if "\\" in text:  # a string may hold escapes as written (JSON in a field): read too
        redacted = redact_escapes(redacted, extra_keys)
    return text if redacted is value else _encoder.encode(redacted).decode()


def redact_raw_bytes(text: str, extra_keys: frozenset[str] = frozenset()) -> str:
    """Bytes kept base64-encoded (RAW_BYTES_PREFIX) redacted as the bytes they are: a secret
    inside them is found (base64 hides it from the rules), and the base64 itself is never
    cut by a rule that took a run of it for a token. Latin-1 reads any bytes as text one to
    one, so every byte a rule leaves alone comes back exactly."""
    raw = base64.b64decode(text.removeprefix(RAW_BYTES_PREFIX))
    as_text = raw.decode("latin-1")
    redacted = redact_sensitive_in_string(as_text, extra_keys)
    if redacted is as_text:
        return text
    return RAW_BYTES_PREFIX + base64.b64encode(redacted.encode("latin-1", "replace")).decode()


def clear_raw_bytes(text: str, clear: Callable[[str], str]) -> str:
    """Bytes kept base64-encoded (RAW_BYTES_PREFIX) cleared as the text they hold: read as
    UTF-8 where they are, each other byte as itself (surrogateescape), so `clear` finds a
    value as the words a producer wrote, also beside a byte that is not UTF-8, and every
    byte it leaves alone comes back exactly."""
    as_text = base64.b64decode(text.removeprefix(RAW_BYTES_PREFIX)).decode(
        "utf-8", "surrogateescape"
    )
    cleared = clear(as_text)
    if cleared == as_text:
        return text
    raw = cleared.encode("utf-8", "surrogateescape")
    return RAW_BYTES_PREFIX + base64.b64encode(raw).decode()


def joined_segments(args: list[Any]) -> str:
    """A job's events as one JSON text: a merged job holds one argument (segment) per
    producer batch, each a JSON array (service/queue/enqueue.lua)."""
    texts = [a for a in args if isinstance(a, str)]
    if len(texts) <= 1:
        return texts[0] if texts else ""
    inner = (t.strip()[1:-1].strip() for t in texts)
    return "[" + ",".join(part for part in inner if part) + "]"


def deserialize_job(raw: bytes) -> dict[str, Any]:
    """Decode an arq job; a job with invalid UTF-8 still decodes, its bad segments flagged.

    A merged job holds one argument (segment) per producer batch: only the segments that are
    not UTF-8 are flagged (`invalid_utf8`: their indexes), so the others are stored."""
    try:
        job: dict[str, Any] = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        # Bytes from a foreign producer that are not UTF-8: keep them (replaced) so the
        # segment fails visibly with its reason instead of vanishing in arq's deserializer.
        # The stdlib decoder takes the undecodable bytes as surrogates, which tell the
        # segments apart (msgspec refuses such text outright).
        job = json.loads(raw.decode("utf-8", errors="surrogateescape"))
        args = job.get("a") or []
        bad = [i for i, a in enumerate(args) if isinstance(a, str) and not _is_utf8(a)]
        # A bad segment's exact bytes are kept, base64-encoded (text could not hold them).
        job["a"] = [
            RAW_BYTES_PREFIX + base64.b64encode(a.encode("utf-8", "surrogateescape")).decode()
            if i in bad
            else a
            for i, a in enumerate(args)
        ]
        kwargs = {
            k: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            if isinstance(v, str)
            else v
            for k, v in (job.get("k") or {}).items()
        }
        job["k"] = {**kwargs, "invalid_utf8": bad or [0]}
    return job


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
