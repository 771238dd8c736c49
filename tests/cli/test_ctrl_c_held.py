"""A server the stack starts must not be cut by a Ctrl-C that lands while it is being spawned.

Between the child's fork and its setsid() (start_new_session) it is still in the terminal's
process group: a Ctrl-C there stopped the embedded Valkey at start (seen once in a full run).
Here the child stays in its parent's group on purpose, the case of that moment; each case
runs in a session of its own, so its Ctrl-C reaches nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

# The parent: spawns `sleep` (held or not), waits for a Ctrl-C to its group, and reports
# whether the child holds it pending and runs on, or how it ended.
PARENT = textwrap.dedent(
    """
    import contextlib, signal, subprocess, sys, threading
    from pathlib import Path
    from service.embedded.spawn import ctrl_c_held

    got = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: got.set())
    with ctrl_c_held() if sys.argv[1] == "held" else contextlib.nullcontext():
        child = subprocess.Popen(["sleep", "60"])
    print("ready", flush=True)
    assert got.wait(30)
    status = Path(f"/proc/{child.pid}/status").read_text()

    def has_sigint(*fields):
        return any(
            int(line.split()[1], 16) & (1 << (signal.SIGINT - 1))
            for line in status.splitlines() if line.startswith(fields)
        )

    # Held: it has the Ctrl-C, blocked, for good (a pending unblocked one is about to act).
    if has_sigint("SigBlk:") and has_sigint("SigPnd:", "ShdPnd:") and child.poll() is None:
        print("pending, running", flush=True)
    else:
        print(f"ended {child.wait(timeout=30)}", flush=True)
    child.kill()
    """
)


@pytest.mark.parametrize(("mode", "expected"), [("held", "pending, running"), ("bare", "ended -2")])
def test_a_ctrl_c_while_spawning_reaches_the_child_only_when_not_held(
    mode: str, expected: str
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", PARENT, mode],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: the Ctrl-C below reaches it and its child only
    ) as parent:
        try:
            assert parent.stdout is not None
            assert parent.stdout.readline().strip() == "ready"
            os.killpg(parent.pid, signal.SIGINT)  # a terminal's Ctrl-C, to the whole group
            assert parent.stdout.readline().strip() == expected
            assert parent.wait(timeout=30) == 0
        finally:
            if parent.poll() is None:
                os.killpg(parent.pid, signal.SIGKILL)
