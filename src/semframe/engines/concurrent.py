"""The concurrent engine base: a subclass writes the single-request call; the base does the rest.

An engine that answers requests one at a time -- an HTTP server, a provider's API -- subclasses
:class:`ConcurrentEngine` and implements one coroutine, :meth:`ConcurrentEngine._acall`
(one request in, one :class:`~semframe.engines.base.RawCompletion` out, raising on failure),
plus :attr:`~semframe.engines.base.Engine.model` and :meth:`~semframe.engines.base.Engine.fingerprint`.
The base owns, for every request of a batch:

- **in-flight limit**: at most ``max_concurrency`` calls at once (an ``asyncio.Semaphore``);
- **rate limits**: ``requests_per_minute`` and ``tokens_per_minute`` (prompt estimate plus
  ``max_tokens`` per request), each a leaky bucket from ``aiolimiter``;
- **timeouts**: each attempt is cancelled after ``timeout_s`` (``asyncio.timeout``);
- **retries**: transient failures (timeouts, HTTP 408/409/429/5xx, connection errors and
  resets, a malformed or truncated response body) are retried up to ``max_attempts`` times in
  all, with exponential backoff and jitter (``tenacity``); a ``Retry-After`` the server sent
  (:attr:`RequestError.retry_after`) is waited instead, capped at ``max_retry_after_s``;
- **failure classification**: a fatal failure (any other 4xx, an invalid request) or a transient
  one that outlived its attempts becomes *that row's* error -- a null with the reason, and how
  many attempts were made -- never an exception that sinks the batch;
- **accounting**: each completion carries its own latency (first send to answer, retries
  included) and its attempt count; ``engine.usage.attempts`` totals them.

:meth:`~semframe.engines.base.Engine.generate` stays synchronous: the batch runs on an event
loop of the engine's own, in a dedicated daemon thread started at the first batch, so it works
the same from a script, from pytest and from Jupyter (whose own loop is already running in the
calling thread). :meth:`close` stops the thread.

Libraries, and why
------------------
- ``tenacity`` (already a core dependency; the answer resolver retries failed batches with it):
  the async retry loop (``AsyncRetrying``: when to stop, what to retry), with a wait of a few
  lines that takes the server's ``Retry-After`` where there is one and otherwise backs off
  exponentially with jitter. Retries live here, not in an HTTP client, so every subclass gets the same
  policy and each row's attempts are counted (the ``openai`` client's built-in retries are
  per-call and invisible to the caller, and they do not retry a 200 whose body is malformed).
- ``aiolimiter`` (small, pure Python, asyncio-native): requests- and tokens-per-minute leaky
  buckets; it takes a weighted ``acquire(amount)`` for tokens.
- ``httpx`` (used by :class:`~semframe.engines.openai.OpenAIEngine`): an async HTTP/1.1 client
  with a connection pool and per-phase timeouts. The ``openai`` client is not used: it would add
  its own retry layer and per-response pydantic validation (CPU time that competes with a local
  server on a small machine) for no gain on the few endpoints an engine needs.

Writing an engine
-----------------
>>> import asyncio
>>> from semframe.engines.base import RawCompletion
>>> class EchoEngine(ConcurrentEngine):
...     name = "echo"
...     @property
...     def model(self):
...         return "echo-1"
...     def fingerprint(self):
...         return "0" * 64
...     async def _acall(self, request):
...         await asyncio.sleep(0.01)  # the network
...         text = request.messages[-1].content
...         return RawCompletion(text, prompt_tokens=self.count_tokens(text), output_tokens=self.count_tokens(text))
>>> from semframe.engines.base import Message, Request
>>> from semframe.plan.spec import TextSpec
>>> with EchoEngine(max_concurrency=4) as engine:
...     done = engine.generate([Request((Message("user", f"hi {i}"),), TextSpec(), 8) for i in range(3)])
>>> [c.value for c in done], [c.attempts for c in done]
(['hi 0', 'hi 1', 'hi 2'], [1, 1, 1])
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
import weakref
from abc import abstractmethod
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import Any

from semframe.engines.base import Engine, RawCompletion, Request
from semframe.errors import EngineError

logger = logging.getLogger("semframe")


class RequestError(Exception):
    """A failed attempt at one request, classified.

    Raised by :meth:`ConcurrentEngine._acall`. ``transient`` failures are retried;
    ``retry_after`` (seconds) is how long the server asked to wait; ``status`` is the HTTP status
    where there is one. The message becomes the row's error if no attempt succeeds, so it must
    never hold a secret.
    """

    transient = False

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class TransientError(RequestError):
    """A failure worth retrying: a timeout, HTTP 408/409/429/5xx, a reset connection, a broken body."""

    transient = True


class FatalError(RequestError):
    """A failure no retry can fix: HTTP 4xx (but 408/409/429), an invalid request."""


def is_transient(exc: BaseException) -> bool:
    """Whether a failed attempt is worth retrying (see :class:`TransientError`)."""
    if isinstance(exc, RequestError):
        return exc.transient
    # A timeout, a refused / reset / dropped connection: the network's, not the request's fault.
    return isinstance(exc, (TimeoutError, ConnectionError, OSError))


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    text = str(exc).strip()
    return text if isinstance(exc, RequestError) and text else f"{type(exc).__name__}: {text}".rstrip(": ")


class _Wait:
    """tenacity wait: the server's ``Retry-After`` where it gave one (plus a little jitter), else
    exponential backoff with jitter: a random wait between a tenth of and the whole ceiling
    ``min(max_s, first_s * 2**n)``, which spreads the retries of many requests that failed together."""

    def __init__(self, first_s: float, max_s: float, max_retry_after_s: float):
        self.first_s, self.max_s, self.max_retry_after_s = first_s, max_s, max_retry_after_s

    def __call__(self, retry_state: Any) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        after = getattr(exc, "retry_after", None)
        if after is not None and after >= 0:
            after = min(float(after), self.max_retry_after_s)
            return after + random.uniform(0, min(1.0, 0.1 * after + 0.05))  # a little jitter on top
        ceiling = min(self.max_s, self.first_s * 2 ** (retry_state.attempt_number - 1))
        return random.uniform(0.1 * ceiling, ceiling)


class _LoopThread:
    """An asyncio event loop running forever in a daemon thread of its own."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the loop and wait for it; an interrupt (Ctrl-C) cancels it there."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise EngineError("generate() was called from inside the engine's own event loop")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # closed meanwhile
            return
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)


def _stop_loop(holder: dict[str, Any], aclose: Any) -> None:
    """Close the subclass's resources on the loop, then stop the loop (at close() or exit)."""
    loop_thread: _LoopThread | None = holder.pop("loop", None)
    if loop_thread is None:
        return
    if aclose is not None and not loop_thread.loop.is_closed():
        try:
            future = asyncio.run_coroutine_threadsafe(aclose(), loop_thread.loop)
            future.result(timeout=5)
        except (Exception, concurrent.futures.TimeoutError):  # closing must not fail
            logger.debug("closing an engine's resources failed", exc_info=True)
    loop_thread.stop()


class ConcurrentEngine(Engine):
    """Base of engines that answer one request per call, many calls in flight (see the module doc).

    Parameters
    ----------
    max_concurrency
        The most calls in flight at once.
    requests_per_minute, tokens_per_minute
        Rate limits (None: none). Tokens are counted before sending: the prompt
        (:meth:`~semframe.engines.base.Engine.count_tokens` over the messages) plus
        ``max_tokens``. The buckets hold a second's worth of requests (at least one) and ten
        seconds' worth of tokens, so a burst never exceeds the rate by more than that.
    timeout_s
        Seconds one attempt may take before it is cancelled (and retried).
    max_attempts
        Attempts per request in all (1: no retry).
    backoff_s, max_backoff_s
        The first retry's wait ceiling, doubling per retry up to ``max_backoff_s``.
    max_retry_after_s
        The longest ``Retry-After`` honoured (a longer one is cut to this).

    Subclasses implement :meth:`_acall` (and may override :meth:`_astart` / :meth:`_aclose` to
    open and close clients on the engine's loop), :attr:`model` and :meth:`fingerprint`.
    """

    name = "concurrent"
    #: Requests run on the engine's own loop thread: the caller's thread only waits.
    pipelined = True

    def __init__(self, *, max_concurrency: int = 32, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, timeout_s: float = 120.0, max_attempts: int = 8,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0, max_retry_after_s: float = 120.0) -> None:
        super().__init__()
        if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
            raise EngineError(f"max_concurrency must be a positive integer, got {max_concurrency!r}")
        for label, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise EngineError(f"{label} must be a positive number or None, got {value!r}")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise EngineError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise EngineError(f"max_attempts must be a positive integer, got {max_attempts!r}")
        self.max_concurrency = max_concurrency
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.timeout_s = float(timeout_s)
        self.max_attempts = max_attempts
        self._wait = _Wait(float(backoff_s), float(max_backoff_s), float(max_retry_after_s))
        self._holder: dict[str, Any] = {}  # the loop thread, shared with the finalizer
        self._loop_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop_loop, self._holder, None)

    # -- what a subclass writes -------------------------------------------------------------------

    @abstractmethod
    async def _acall(self, request: Request) -> RawCompletion:
        """Answer one request (one attempt). Raise :class:`TransientError` / :class:`FatalError`
        (or let a timeout / connection error through) when it fails; return a RawCompletion with
        ``error`` set for an answer that is final but unusable."""

    async def _astart(self) -> None:
        """Called once on the engine's loop before its first call (open clients here)."""

    async def _aclose(self) -> None:
        """Called once on the engine's loop when the engine closes (close clients here)."""

    def estimate_request_tokens(self, request: Request) -> int:
        """Tokens one request is charged against ``tokens_per_minute`` before it is sent."""
        return sum(self.count_tokens(m.content) for m in request.messages) + request.max_tokens

    # -- the base's machinery ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def _loop_thread(self) -> _LoopThread:
        with self._loop_lock:
            if self._closed:
                raise EngineError(f"this {type(self).__name__} is closed; create a new one")
            loop_thread = self._holder.get("loop")
            if loop_thread is None:
                loop_thread = self._holder["loop"] = _LoopThread(f"semframe-{self.name}-engine")
                # From now on, closing (or garbage collection, or exit) also closes the clients.
                self._finalizer.detach()
                self._finalizer = weakref.finalize(self, _stop_loop, self._holder, self._aclose)
            return loop_thread

    def run_async(self, make: Any, *args: Any) -> Any:
        """Run the coroutine ``make(*args)`` on the engine's loop and return its result (synchronously)."""
        loop_thread = self._loop_thread()  # raises on a closed engine before a coroutine exists
        return loop_thread.run(make(*args))

    def _generate(self, requests: Sequence[Request]) -> list[RawCompletion]:
        return self.run_async(self._agenerate, list(requests))

    async def _agenerate(self, requests: list[Request]) -> list[RawCompletion]:
        if not self._started:
            await self._astart()
            self._started = True
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._limiters = self._make_limiters()
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    def _make_limiters(self) -> list[tuple[Any, Any]]:
        """(limiter, amount function) pairs for the configured rate limits."""
        limiters: list[tuple[Any, Any]] = []
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            return limiters
        from aiolimiter import AsyncLimiter

        if self.requests_per_minute is not None:
            per_s = self.requests_per_minute / 60.0
            burst = max(1.0, per_s)  # a second's worth, at least one request
            limiters.append((AsyncLimiter(burst, burst / per_s), lambda r: 1.0))
        if self.tokens_per_minute is not None:
            capacity = self.tokens_per_minute / 6.0  # ten seconds' worth of tokens
            limiters.append((AsyncLimiter(capacity, 10.0),
                             lambda r, cap=capacity: float(min(cap, self.estimate_request_tokens(r)))))
        return limiters

    async def _attempt(self, request: Request) -> RawCompletion:
        async with self._semaphore:
            for limiter, amount in self._limiters:
                await limiter.acquire(amount(request))
            async with asyncio.timeout(self.timeout_s):
                raw = await self._acall(request)
        if not isinstance(raw, RawCompletion):
            raise EngineError(f"{type(self).__name__}._acall must return a RawCompletion, got {type(raw).__name__}")
        return raw

    async def _one(self, request: Request) -> RawCompletion:
        import tenacity

        start = time.perf_counter()
        attempts = 0
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(is_transient),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    try:
                        raw = await self._attempt(request)
                    except TimeoutError as exc:
                        raise TransientError(f"no answer within timeout_s={self.timeout_s:g}") from exc
        except EngineError:
            raise  # the engine broke its own contract: a bug, not a bad row
        except Exception as exc:  # the row fails, the batch goes on
            why = describe_failure(exc)
            if is_transient(exc):
                error = f"failed after {attempts} attempt(s), the last: {why}"
            else:
                error = f"{why} (not retried: the request itself was refused)"
            return RawCompletion(None, "error", error=error, latency_s=time.perf_counter() - start,
                                 attempts=attempts)
        return replace(raw, latency_s=time.perf_counter() - start, attempts=attempts + raw.attempts - 1)

    def close(self) -> None:
        """Stop the engine's loop thread and close its clients. Safe to call twice."""
        with self._loop_lock:
            self._closed = True
        self._finalizer()
