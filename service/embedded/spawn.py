"""Starting a server's process so that a terminal's Ctrl-C cannot stop it half-started."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Start a server's process inside this, with `start_new_session=True`: a terminal's Ctrl-C
    (SIGINT to the whole foreground group) that lands between the child's fork and its setsid()
    would stop it at once, so this thread holds SIGINT back while it spawns. The child inherits
    the block (a server's own session never needs SIGINT); this thread gets any pending one
    when it lets go, so no Ctrl-C is lost."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
