"""Bounds of the producer's promises, shared by its tests."""

from __future__ import annotations

# seconds: the default capture timeout (0.25 s) plus the slack a loaded 2-core machine needs to
# schedule the wake-up (seen up to ~0.45 s there; 8 builds sharing 2 cores stall longer). An
# unbounded capture waits for the kernel's TCP connect timeout against a blackhole (minutes),
# so 2 s still tells the two apart.
CAPTURE_BOUND = 0.25 + 1.75
