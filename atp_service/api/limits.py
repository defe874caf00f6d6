"""Abuse limits: a cap on request body size (pure ASGI) and per-API-key rate limiting."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atp_service import metrics
from atp_service.api.errors import ProblemError, problem_response

log = logging.getLogger(__name__)


def _too_large_detail(max_bytes: int) -> str:
    return f"the request body exceeds the limit of {max_bytes} bytes"


def payload_too_large(max_bytes: int) -> HTTPException:
    """The 413 raised while the body is read; the error handlers make it problem JSON."""
    return HTTPException(413, _too_large_detail(max_bytes))


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with a 413 ``payload_too_large`` problem.

    A declared ``Content-Length`` over the limit is refused before the app runs and
    before a byte of the body is read. A body without one (chunked) is counted as it is
    received; the chunk that crosses the limit raises a 413 to whoever is reading, so
    the app never holds more than ``max_bytes`` of it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.max_bytes
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    continue  # the server refuses those
                if declared > max_bytes:
                    response = problem_response(
                        413, "payload_too_large", _too_large_detail(max_bytes)
                    )
                    await response(scope, receive, send)
                    return
            elif name == b"transfer-encoding":
                chunked = True
        if not chunked and scope.get("http_version") != "2":
            # HTTP/1.x delivers exactly the declared length (checked above), or no body at
            # all without one: nothing to count, so the hot paths go through unwrapped.
            await self.app(scope, receive, send)
            return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise payload_too_large(max_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except HTTPException as exc:
            # Raised from counting_receive where no exception handler saw it (a body read
            # outside a route); inside routes the app's handlers answer it themselves.
            if exc.status_code != 413 or response_started:
                raise
            response = problem_response(413, "payload_too_large", str(exc.detail))
            await response(scope, receive, send)


# -- rate limiting -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class LocalBuckets:
    """A token bucket per API key name in this process: ``rate`` a second, bursts of ``burst``.

    What the limiter falls back on while Redis cannot be asked; with N API processes a key
    may then make N times ``rate``. As many buckets as configured keys: memory is bounded.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key_name: str) -> float:
        """Take a token for ``key_name``: 0.0 if granted, else the seconds until one is."""
        now = self._clock()
        bucket = self._buckets.get(key_name)
        if bucket is None:
            bucket = self._buckets[key_name] = _Bucket(float(self.burst), now)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


class Buckets(Protocol):
    """The service-wide buckets (``store.rate_limit.SharedBuckets``)."""

    async def take(self, key_name: str) -> float: ...


#: Errors that mean the shared buckets cannot be asked now; set by the app (the store's).
OutageErrors = tuple[type[BaseException], ...]

#: While the shared buckets cannot be asked, this process limits alone this long before
#: asking them again (one request asks; the others meanwhile use the local buckets).
SHARED_RETRY_SECONDS = 1.0


class RateLimiter:
    """One limit per API key name for the whole service, however many API processes.

    Each request takes a token from the key's bucket in Redis (``shared``). When Redis cannot
    be asked (an outage, a timeout) the request is not failed for it: the limiter falls back
    to this process's own buckets (``LocalBuckets``) for ``SHARED_RETRY_SECONDS``, then asks
    Redis again with one request. So a Redis outage never makes a 429 or a 5xx of its own:
    the route answers as it would without limits (a 503 where it needs Redis, its answer
    where it does not), each process holding each key to the rate alone meanwhile.
    """

    def __init__(
        self,
        shared: Buckets | None,
        rate: float,
        burst: int,
        *,
        outage_errors: OutageErrors = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.shared = shared
        self.local = LocalBuckets(rate, burst, clock)
        self._outage_errors = outage_errors
        self._clock = clock
        #: Until when the shared buckets are not asked (0: they are).
        self._local_until = 0.0
        self._asking_again = False

    @property
    def shared_in_use(self) -> bool:
        return self.shared is not None and self._local_until == 0.0

    async def acquire(self, key_name: str) -> float:
        """Take a token for ``key_name``: 0.0 if granted, else the seconds until one is."""
        shared = self.shared
        if shared is None:
            return self.local.acquire(key_name)
        asking_again = False
        if self._local_until:
            if self._asking_again or self._clock() < self._local_until:
                return self.local.acquire(key_name)
            asking_again = self._asking_again = True
        try:
            wait = await shared.take(key_name)
        except self._outage_errors as exc:
            metrics.REDIS_ERRORS.labels("rate_limiter").inc()
            if not self._local_until:
                log.warning(
                    "rate limits: Redis cannot be asked (%r); each process limits alone "
                    "until it can",
                    exc,
                )
            self._local_until = self._clock() + SHARED_RETRY_SECONDS
            return self.local.acquire(key_name)
        finally:
            if asking_again:
                self._asking_again = False
        if self._local_until:
            log.info("rate limits: Redis answers again; one limit for every process again")
            self._local_until = 0.0
        return wait

    async def check(self, key_name: str) -> None:
        """Raise a 429 ``rate_limited`` problem, with ``Retry-After``, if the key is over."""
        wait = await self.acquire(key_name)
        if wait > 0.0:
            metrics.RATE_LIMITED.labels(key_name).inc()
            retry_after = max(1, math.ceil(wait))
            raise ProblemError(
                429,
                "rate_limited",
                f"the API key {key_name!r} is over its rate limit of {self.rate:g} "
                f"requests per second; retry after {retry_after} s",
                title="Too Many Requests",
                headers={"Retry-After": str(retry_after)},
            )


def limits_of(rate_per_second: float, burst: int) -> tuple[float, int] | None:
    """(rate, burst) the settings ask for; None when ``rate_per_second`` is 0 (off).
    A ``burst`` of 0 follows the rate (rounded up, at least 1)."""
    if rate_per_second <= 0:
        return None
    return rate_per_second, burst or max(1, math.ceil(rate_per_second))
