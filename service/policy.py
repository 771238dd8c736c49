"""The retry policy's numbers: the worker applies them, the admin API shows them."""

from __future__ import annotations

# Unknown errors: 3 attempts with exponential backoff from 5 s (5 s, then 10 s), as TestPlanIt's
# audit queue does: a transient hiccup recovers, and the window stays under a minute before
# the events are set aside in the dead letter for an admin to replay.
MAX_ATTEMPTS = 3
BACKOFF_BASE = 5.0  # seconds; attempt n waits BACKOFF_BASE * 2 ** (n - 1)
