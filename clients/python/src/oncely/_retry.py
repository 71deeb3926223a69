"""How a call retries: the policy, the waits between attempts, and the jitter."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How many times to try one call, how long to wait in between, and how long the
    whole call may take (the Rust client's ``RetryPolicy``, in seconds).

    The wait before retry ``n`` (from 1) starts from the nominal backoff
    ``min(max_delay, base_delay * 2 ** (n - 1))``:

    * when the daemon's answer asked to wait (``Retry-After``, sent with every 503),
      the wait is ``Retry-After`` plus a random extra of up to
      ``max(Retry-After, nominal)`` (full jitter over one more interval), so that shed
      clients come back spread out rather than all at once;
    * otherwise half the nominal backoff is fixed and half random.

    ``deadline`` bounds the whole call, attempts and waits included: an attempt gets at
    most what is left of it, and a wait that would end past it is not started (the
    call raises its last error at once).

    With the defaults (4 attempts, 50 ms doubling up to 2 s, 15 s deadline) the three
    waits add up to 175-350 ms without ``Retry-After``; against a daemon that sheds
    every attempt with ``Retry-After: 1``, to 3-6 s.
    """

    attempts: int = 4
    """Requests per call, the first included (at least 1; 1 means no retry)."""
    base_delay: float = 0.05
    """The nominal wait before the first retry, in seconds."""
    max_delay: float = 2.0
    """The longest nominal wait between two attempts (a longer ``Retry-After`` is
    honoured, within the deadline)."""
    deadline: float = 15.0
    """The longest a call may take, every attempt and wait included (more than 0)."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("retry.attempts must be at least 1 (1 means no retry)")
        if not self.deadline > 0:
            raise ValueError("retry.deadline must be more than 0")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry delays must not be negative")

    @classmethod
    def none(cls) -> RetryPolicy:
        """One attempt, no retry, within the default deadline."""
        return cls(attempts=1, base_delay=0.0, max_delay=0.0)

    def delay(self, retry: int, unit: float, retry_after: float | None) -> float:
        """The wait before retry number ``retry`` (1 for the first retry), given a
        random ``unit`` in ``[0, 1)`` and the daemon's ``Retry-After``, if any."""
        factor = 2.0 ** min(max(retry - 1, 0), 64)
        nominal = min(self.base_delay * factor, self.max_delay)
        unit = min(max(unit, 0.0), 1.0)
        if retry_after is not None:
            return retry_after + max(retry_after, nominal) * unit
        half = nominal / 2
        return half + half * unit


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in whole seconds (the only form the daemon sends); anything else
    (an HTTP date, garbage) is ignored."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        return None
    return float(int(value))
