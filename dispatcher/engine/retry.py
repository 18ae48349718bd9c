"""The one retry policy: quick in-call retries for blips, then backoff through the broker.

- transient: up to ``quick_retries`` immediate retries (tenacity, short jittered waits), then
  a delayed re-delivery with exponential backoff and jitter, until ``max_attempts`` failed
  attempts have been spent;
- rate limited: no quick retry; wait the provider's ``retry_after`` (or the first backoff step)
  without spending the retry budget;
- auth: a channel-wide fault; backs off like a transient error, and is logged loudly;
- permanent: stop at once with the reason.

A delivery that meets a closed send window or a paused channel was not tried: it waits for the
window or the pause, also without spending its budget (:meth:`RetryPolicy.next_delay`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from channels.base import ErrorClass, TransientError
from dispatcher.observability.metrics import count_quick_retry

# Retries for these wait as asked and do not count against the delivery's attempt budget.
NO_BUDGET = (
    ErrorClass.rate_limited,
    ErrorClass.auth,
    ErrorClass.deferred,
    ErrorClass.send_window,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 10
    quick_retries: int = 2
    quick_wait: float = 0.2
    base_delay: float = 30.0
    max_delay: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            quick_retries=settings.quick_retries,
            quick_wait=settings.quick_retry_seconds,
            base_delay=settings.retry_base_seconds,
            max_delay=settings.retry_max_seconds,
        )

    def quick_after_failure(self, failures: int) -> AsyncRetrying | None:
        """Tenacity loop for the quick retries after a first transient failure, never past the
        delivery's attempt budget; None when no quick retry is left."""
        tries = min(self.quick_retries, self.max_attempts - failures)
        if tries <= 0:
            return None
        return AsyncRetrying(
            stop=stop_after_attempt(tries),
            wait=wait_exponential_jitter(
                multiplier=self.quick_wait * 2,
                max=max(self.quick_wait * 8, 0.001),
                jitter=self.quick_wait,
            ),
            retry=retry_if_exception_type(TransientError),
            reraise=True,
            # The first try went out before this loop: each attempt here is a quick retry.
            before=count_quick_retry,
        )

    def first_quick_wait(self) -> float:
        """The pause before the first quick retry (the loop waits between the later ones)."""
        return self.quick_wait + random.uniform(0, self.quick_wait)

    def backoff(self, failures: int) -> float:
        """Seconds before the next round after ``failures`` failed attempts (equal jitter)."""
        step = min(self.max_delay, self.base_delay * (2 ** max(0, failures - 1)))
        return step / 2 + random.uniform(0, step / 2)

    def exhausted(self, failures: int) -> bool:
        return failures >= self.max_attempts

    def next_delay(
        self,
        *,
        failures: int,
        error_class: str | None,
        retry_after: float | None,
        not_before: datetime | None,
        now: datetime,
    ) -> float | None:
        """Seconds until a retrying delivery's next round; None when its budget is spent and
        it fails. An instant to wait for (``not_before``, a send window's opening) comes first,
        then a wait the provider or a pause asked for, then the backoff."""
        if not_before is not None:
            return max(0.0, (not_before - now).total_seconds())
        if error_class in NO_BUDGET:
            return retry_after or self.backoff(1)
        if self.exhausted(failures):
            return None
        return self.backoff(failures)
