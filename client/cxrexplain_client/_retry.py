"""Retry policy shared by both transports and both clients: what is retried, how often, how long.

Explanations are pure functions of their input, so a call that did not get its answer can be sent again
with the same request id. Retried (:class:`Outcome`):

- ``unavailable``: HTTP 503, a refused or reset connection, gRPC UNAVAILABLE; the server or its worker is
  (re)starting. Retried until the policy's ``budget`` (seconds since the first attempt) is spent.
- ``worker_died``: the worker died while handling this very request (TorchServe 0.12: HTTP 507 ``Worker
  died.``, over gRPC RESOURCE_EXHAUSTED with that message). Retried at most once, then raised: an image
  that kills one worker must not go on to kill the next.
- ``unauthorized``: a refused key (keys expire, a restart writes new ones); the caller re-reads the key
  file and retries once, at once.

Backoff is capped exponential, ``initial * multiplier**n`` up to ``maximum``, with jitter (each wait is
drawn between half the cap and the cap). gRPC retries are this same application-level loop, not the
channel's service config: gRPC core gives up on transparent retries for messages above its per-call retry
buffer, and X-rays are larger. This module does no I/O and never sleeps; the clients do.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final


class _UseClientDefault:
    """Sentinel type: "no value given here, use the client's setting" (``None`` means *no timeout*)."""

    _instance: _UseClientDefault | None = None

    def __new__(cls) -> _UseClientDefault:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


USE_CLIENT_DEFAULT: Final = _UseClientDefault()

WORKER_DEATH_RETRIES: Final = 1  # a request that killed a worker is sent once more, never twice


class Outcome(enum.Enum):
    """Why an attempt failed, as far as retrying is concerned."""

    UNAVAILABLE = "unavailable"
    WORKER_DIED = "worker_died"
    UNAUTHORIZED = "unauthorized"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Parameters
    ----------
    retries
        Most retries after the first attempt; ``None`` (the default): as many as ``budget`` allows; 0
        disables retrying (the key-file re-read included).
    initial_backoff, max_backoff
        Seconds before the first retry, and the cap on any wait.
    multiplier
        Growth of the wait per retry.
    budget
        Seconds after the first attempt within which a retry may still start. The default, 60 s, rides out
        a TorchServe frontend restart (about 30 s) and a worker restart (4 to 15 s).
    """

    retries: int | None = None
    initial_backoff: float = 0.2
    max_backoff: float = 2.0
    multiplier: float = 2.0
    budget: float = 60.0

    def __post_init__(self) -> None:
        if self.retries is not None and self.retries < 0:
            raise ValueError(f"retries must be >= 0 or None, got {self.retries}")
        if self.initial_backoff <= 0 or self.max_backoff < self.initial_backoff or self.multiplier < 1:
            raise ValueError("need 0 < initial_backoff <= max_backoff and multiplier >= 1")
        if self.budget < 0:
            raise ValueError(f"budget must be >= 0 seconds, got {self.budget}")

    @property
    def enabled(self) -> bool:
        return self.retries != 0

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number ``retry`` (0-based): jitter under the capped exponential curve."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        return rng.uniform(0.5 * cap, cap)


class RetryState:
    """The retry decisions of one call, over all its attempts (pure: the clock is injected).

    :meth:`next_delay` answers each failed attempt with the seconds to wait before the next, or ``None``
    when the call must fail now.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self._start = clock()
        self.attempts = 1
        self.worker_deaths = 0
        self.token_refreshed = False

    def elapsed(self) -> float:
        return self._clock() - self._start

    def next_delay(self, outcome: Outcome) -> float | None:
        """Seconds to wait before sending again after ``outcome``, or ``None`` to give up."""
        policy = self.policy
        retries = self.attempts - 1
        if not policy.enabled or (policy.retries is not None and retries >= policy.retries):
            return None
        if outcome is Outcome.UNAUTHORIZED:
            if self.token_refreshed:
                return None
            self.token_refreshed = True
            self.attempts += 1
            return 0.0
        if outcome is Outcome.WORKER_DIED:
            self.worker_deaths += 1
            if self.worker_deaths > WORKER_DEATH_RETRIES:
                return None
        delay = policy.backoff(retries, self._rng)
        if self.elapsed() + delay > policy.budget:
            return None
        self.attempts += 1
        return delay


def grpc_channel_options(policy: RetryPolicy, max_message_bytes: int) -> list[tuple[str, object]]:
    """Channel options: no service-config retries (the SDK's own loop retries), reconnection no slower than
    the policy's backoff (gRPC's default backoff grows to 120 s, far past a restarted server), and message
    limits above TorchServe's 6.5 MB default (gRPC's own default of 4 MB would reject large payloads)."""
    return [
        ("grpc.initial_reconnect_backoff_ms", max(1, int(policy.initial_backoff * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(1, int(policy.max_backoff * 1000))),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
