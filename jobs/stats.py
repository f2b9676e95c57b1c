"""Job and webhook statistics, counted in Redis by the scripts that make the transitions.

Where a job changes state (``jobs/scripts.py``: START, FINISH, CANCEL, REQUEUE) or a webhook
attempt is settled (``webhooks/outbox.py``: SETTLE), the same script adds to a stats hash:
a counter per outcome and, for the phases of a job, a histogram with fixed buckets. That is a
few hash increments inside a script that runs anyway (no extra round trip), and every worker
and deliverer, on every host, counts into the same place: one ``/metrics`` scrape of any API
process shows the whole fleet (``api/metrics.py`` reads them at scrape time).

Fields of ``dq:stats:<model>`` and ``dq:wh:stats``:

``c:<outcome>``   counter: ``succeeded``, ``failed:<error type>``, ``canceled``, ``expired``;
                  webhook attempts: ``delivered``, ``retrying``, ``failed``, ``gone``, ``given_up``, ``refused``
``h:<name>:<i>``  observations that fell in bucket ``i`` (1-based; ``len(BUCKETS_S) + 1`` is +Inf)
``h:<name>:sum``  their sum, in seconds
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Upper bounds (seconds) of the histogram buckets, shared by every phase: from a tiny model's
# generation (~0.1 s) to an hour in the queue.
BUCKETS_S: tuple[float, ...] = (
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
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)

# The job phases measured per model (histogram name → what it measures).
JOB_PHASES = {
    "queue_wait": "from queued (or re-queued) to started by a worker",
    "generation": "the pipeline call (for a static batch: the whole call)",
    "storage": "encode and upload of the outputs, and the commit",
    "end_to_end": "from submit to succeeded",
}
WEBHOOK_LATENCY = "delivery"  # the webhook histogram: from the event to its delivery (2xx)

# Shared by the scripts that count (each declares the stats key it writes).
LUA = (
    "local STAT_BUCKETS = {"
    + ", ".join(repr(b) for b in BUCKETS_S)
    + "}\n"
    + r"""
-- Count `value` seconds into histogram `name` of the stats hash `key` (nothing when nil).
local function observe(key, name, value)
  if value == nil or value < 0 then return end
  local i = #STAT_BUCKETS + 1
  for j, bound in ipairs(STAT_BUCKETS) do
    if value <= bound then i = j break end
  end
  redis.call('HINCRBY', key, 'h:' .. name .. ':' .. i, 1)
  redis.call('HINCRBYFLOAT', key, 'h:' .. name .. ':sum', value)
end
-- One more of `outcome` in the stats hash `key`.
local function count(key, outcome)
  if outcome ~= nil and outcome ~= '' then redis.call('HINCRBY', key, 'c:' .. outcome, 1) end
end
"""
)


def job_outcome(status: str, error_type: str = "") -> str:
    """The counter a terminal job adds to: ``succeeded``, ``canceled``, ``expired`` (a queued job
    past its TTL) or ``failed:<error type>``."""
    if status == "failed":
        return "expired" if error_type == "expired" else f"failed:{error_type or 'unknown'}"
    return status


@dataclass(frozen=True)
class Histogram:
    """Cumulative buckets ``(upper bound, count)`` ending with +Inf, their sum and count."""

    buckets: list[tuple[float, int]]
    sum_s: float

    @property
    def count(self) -> int:
        return self.buckets[-1][1] if self.buckets else 0


@dataclass(frozen=True)
class Stats:
    counters: dict[str, int] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)


def parse_stats(raw: Mapping[str, str], histograms: tuple[str, ...]) -> Stats:
    """A stats hash as read (``HGETALL``), into counters and the named ``histograms`` (each
    present, empty if nothing was observed yet: a scrape always shows every series)."""
    counters = {name[2:]: int(value) for name, value in raw.items() if name.startswith("c:")}
    found = {}
    for name in histograms:
        running, buckets = 0, []
        for i, bound in enumerate((*BUCKETS_S, float("inf")), 1):
            running += int(raw.get(f"h:{name}:{i}", 0))
            buckets.append((bound, running))
        found[name] = Histogram(buckets, float(raw.get(f"h:{name}:sum", 0.0)))
    return Stats(counters, found)
