"""Bounds of the producer's promises, shared by its tests."""

from __future__ import annotations

# seconds: the default capture timeout plus the slack a loaded 2-core machine needs to schedule
# the wake-up (seen up to ~0.45 s there); an unbounded capture would take seconds.
CAPTURE_BOUND = 0.25 + 0.5
