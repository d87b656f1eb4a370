"""Token-bucket rate limits for the login and token endpoints (per client address).

Kept in each process's memory: several workers each allow the rate, which still bounds a
password-guessing attack to a small multiple of it, while the per-account lockout in
:mod:`carebridge.security.users` (stored in the database) holds across workers.
"""

from __future__ import annotations

import threading
import time


class RateLimiter:
    def __init__(self, per_minute: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> float:
        """0.0 when the request may go ahead, else the seconds to wait (Retry-After)."""
        moment = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, moment))
            tokens = min(self.burst, tokens + (moment - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, moment)
                return (1.0 - tokens) / self.rate
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                self._buckets.clear()  # a flood of addresses: start over rather than grow
            self._buckets[key] = (tokens - 1.0, moment)
            return 0.0
