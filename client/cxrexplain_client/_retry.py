"""Retry policy shared by both transports: only unavailable / overloaded answers are retried.

gRPC retries are declared in the channel's service config (the gRPC library runs them, UNAVAILABLE only);
REST retries are a small loop in the client (HTTP 503 and refused connections only). Backoff is capped
exponential: ``initial * multiplier**attempt`` up to ``maximum``, with full jitter as gRPC does.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
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

INFERENCE_SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
MANAGEMENT_SERVICE = "org.pytorch.serve.grpc.management.ManagementAPIsService"
GRPC_MAX_ATTEMPTS = 5  # gRPC clamps maxAttempts to 5


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry an unavailable server.

    Parameters
    ----------
    retries
        Retries after the first attempt (0 disables retrying). gRPC caps the total attempts at 5.
    initial_backoff, max_backoff
        Seconds before the first retry, and the cap on any wait.
    multiplier
        Growth of the wait per retry.
    """

    retries: int = 3
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.initial_backoff <= 0 or self.max_backoff < self.initial_backoff or self.multiplier < 1:
            raise ValueError("need 0 < initial_backoff <= max_backoff and multiplier >= 1")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Waits before each retry: full jitter under the capped exponential curve."""
        rng = rng or random.Random()
        for attempt in range(self.retries):
            cap = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
            yield rng.uniform(0.5 * cap, cap)

    def grpc_service_config(self) -> str:
        """The channel's service config JSON declaring these retries for both TorchServe services."""
        method_config: dict[str, object] = {
            "name": [{"service": INFERENCE_SERVICE}, {"service": MANAGEMENT_SERVICE}],
        }
        if self.retries > 0:
            method_config["retryPolicy"] = {
                "maxAttempts": min(GRPC_MAX_ATTEMPTS, self.retries + 1),
                "initialBackoff": f"{self.initial_backoff:.3f}s",
                "maxBackoff": f"{self.max_backoff:.3f}s",
                "backoffMultiplier": self.multiplier,
                "retryableStatusCodes": ["UNAVAILABLE"],
            }
        return json.dumps({"methodConfig": [method_config]})


def grpc_channel_options(policy: RetryPolicy, max_message_bytes: int) -> list[tuple[str, object]]:
    """Channel options: retries from the service config, and message limits above TorchServe's 6.5 MB default
    (gRPC's own default of 4 MB would reject large explanation payloads)."""
    return [
        ("grpc.enable_retries", 1 if policy.retries > 0 else 0),
        ("grpc.service_config", policy.grpc_service_config()),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
