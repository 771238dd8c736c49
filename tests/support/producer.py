"""Bounds of the producer's promises, shared by its tests."""

from __future__ import annotations

# seconds: the default capture timeout (0.25 s) plus the slack a loaded 2-core machine needs to
# schedule the wake-up (seen up to ~0.45 s there; 200 captures behind 5,000 spooled events took
# 2.48 s at load 18). An unbounded capture waits for the kernel's TCP connect timeout against
# a blackhole (minutes), so 5 s still tells the two apart.
CAPTURE_BOUND = 0.25 + 4.75
