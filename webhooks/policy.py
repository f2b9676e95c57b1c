"""What one attempt's result means, and when the next attempt is due. Plain functions, no I/O.

2xx: delivered. 410: gone (the receiver asked us to stop). 3xx: failed (redirects are not
followed). Other 4xx except 408 and 429: failed. Connection errors, timeouts, 408, 429 and
5xx: retried after the schedule's next delay (±10 % jitter), or after ``Retry-After`` when
that is longer, never more than 24 h; once the schedule is exhausted the message is given up.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

MAX_DELAY_S = 86_400.0
JITTER = 0.10
RETRYABLE_4XX = frozenset({408, 429})


class Outcome(str, enum.Enum):
    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"
    GONE = "gone"
    GIVEN_UP = "given_up"
    REFUSED = "refused"  # the URL is not (or no longer) a permitted target: nothing was sent

    def is_final(self) -> bool:
        return self is not Outcome.RETRYING


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    delay_s: float | None = None  # set when RETRYING: seconds until the next attempt


def parse_schedule(raw: str) -> tuple[float, ...]:
    """``"0,5,300"`` → (0.0, 5.0, 300.0): the delay before attempt 1, 2, 3, … in seconds."""
    try:
        delays = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"DQ_WEBHOOK_RETRY_SCHEDULE_S: {exc}") from None
    if not delays or any(d < 0 or d > MAX_DELAY_S for d in delays):
        raise ValueError("DQ_WEBHOOK_RETRY_SCHEDULE_S: give at least one delay, each from 0 to 86400 seconds")
    return delays


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)


def classify(status: int | None) -> Outcome:
    """The outcome a status means on its own (RETRYING for the retryable ones; None = no response)."""
    if status is None or status >= 500 or status in RETRYABLE_4XX:
        return Outcome.RETRYING
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.GONE
    return Outcome.FAILED  # 1xx leftovers, 3xx (no redirects), other 4xx


def jittered(delay_s: float, rng: random.Random | None = None) -> float:
    return delay_s * (rng or random).uniform(1 - JITTER, 1 + JITTER)


def decide(
    status: int | None,
    attempt: int,
    schedule: tuple[float, ...],
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """``attempt`` (1-based) just ended with ``status``: final outcome, or retry after how long."""
    outcome = classify(status)
    if outcome is not Outcome.RETRYING:
        return Decision(outcome)
    if attempt >= len(schedule):
        return Decision(Outcome.GIVEN_UP)
    delay = jittered(schedule[attempt], rng)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return Decision(Outcome.RETRYING, min(delay, MAX_DELAY_S))
