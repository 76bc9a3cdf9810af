"""Run statistics that the dashboard reads: how many calls each dispatcher started and
how they ended, per minute, and how late they started (start minus due time)."""

from __future__ import annotations

import math

LATENESS_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    math.inf,
)
"""Upper bounds, in seconds, of the lateness buckets (the last one takes the rest)."""
