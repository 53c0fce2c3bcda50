"""The trial's wall-clock, booked interval by interval to named buckets.

Every interval between two `book` calls goes to exactly one bucket, so the buckets add up to the
trial's total duration (`trial_summary.json`'s `time_split`).
"""

from __future__ import annotations

import time
from typing import Dict


class Clock:
  """Books every interval of wall-clock time to one named bucket."""

  def __init__(self) -> None:
    self.start = self.last = time.perf_counter()
    self.buckets: Dict[str, float] = {}

  def book(self, bucket: str) -> float:
    """Books the time since the last call to `bucket`; returns it in seconds."""
    now = time.perf_counter()
    elapsed = now - self.last
    self.buckets[bucket] = self.buckets.get(bucket, 0.0) + elapsed
    self.last = now
    return elapsed

  def total(self) -> float:
    """Seconds from the start to the last booking."""
    return self.last - self.start
