"""Calls to remote servers, shared by the openai policy backend and the remote reward backend.

One call is one POST with one deadline (`timeout_s`) over every attempt, wait and backoff in it: an upstream that
sends its answer a byte at a time cannot hold a request past it. An answer is read up to `max_bytes`; a longer one
is refused. What each answer means:

- 200: parsed by the backend; an answer that is not the JSON expected counts as a failure of that replica.
- 429: the replica is busy. No call asks it again before its `Retry-After` (1 s when it sends none): the call
  goes to another replica, or waits when every one is busy and the wait fits in the deadline, else it gives up with
  `UpstreamBusy` (the client's 503 with a `Retry-After`).
- 401, 403, 404: a misconfiguration here (key, URL, model name), never the client's fault: a failure.
- 408, 5xx, any other status but a 4xx, transport errors, an answer over `max_bytes`: failures.
- any other 4xx: the remote server refused the request itself: `RemoteRequestError` (the client's 400), not retried.

A failure is retried `retries` times, on another replica where there is one, after a short backoff. A replica
that failed is set aside (`eject_s`, doubled at each failure in a row up to 8 times as long): calls go to the others
meanwhile, and the first call after that tries it again, so a dead replica costs an attempt once a while rather
than on every other call, and a restarted one is back within seconds. What failed
(URLs, statuses, what the remote server said) goes into the log and the exception's message, which the server
keeps in its log: the client hears only which backend failed.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import httpx

from models.interface import BackendError, RemoteRequestError, Role, UpstreamBusy

log = logging.getLogger(__name__)

T = TypeVar("T")
Balance = Literal["round_robin", "least_outstanding"]
MAX_ANSWER_BYTES = 16 << 20
"""The default cap on one answer of a remote server."""
DEFAULT_RETRY_AFTER_S = 1.0
"""How long a replica that answered 429 without a `Retry-After` is left alone."""
EJECT_S = 1.0
"""How long a replica that failed is set aside by default (doubled at each failure in a row)."""
EJECT_DOUBLINGS = 3
"""A replica failing again and again is set aside 2**3 = 8 times `eject_s` at most: about the longest a restarted
replica waits for calls."""
_NOT_THE_CLIENTS = {401, 403, 404, 408}
"""4xx answers that are not about the client's request: a key, URL or model name misconfigured here, a timeout."""


class Balancer:
    """Picks a replica per attempt, counts the requests each one has outstanding, keeps busy ones (429) aside
    until their `Retry-After` has passed, and failed ones aside for a while (`failed`)."""

    def __init__(self, urls: Sequence[str], policy: Balance = "round_robin", eject_s: float = EJECT_S):
        if not urls:
            raise ValueError("at least one base URL is needed")
        self.urls = list(urls)
        self.policy = policy
        self.outstanding = dict.fromkeys(self.urls, 0)
        self.busy_until = dict.fromkeys(self.urls, 0.0)
        """`time.monotonic()` before which a replica is not asked."""
        self.eject_s = eject_s
        self.failures_in_a_row = dict.fromkeys(self.urls, 0)
        self.ejected_until = dict.fromkeys(self.urls, 0.0)
        """`time.monotonic()` before which a replica that failed is asked only when every other one failed too."""
        self._turn = itertools.count()

    def next_turn(self) -> int:
        """Where the round robin starts for the next call: one turn a call, however many attempts it makes."""
        return next(self._turn)

    def pick(self, avoid: Collection[str] = (), turn: int | None = None) -> str | None:
        """A replica that is not busy, outside `avoid` unless every such replica is in it; None while all are busy.
        The round robin starts at `turn` (a call's `next_turn()`), at the next turn when none is given."""
        start, now = self.next_turn() if turn is None else turn, time.monotonic()
        order = [self.urls[(start + i) % len(self.urls)] for i in range(len(self.urls))]
        free = [u for u in order if self.busy_until[u] <= now]
        if not free:
            return None
        order = [u for u in free if u not in avoid and self.ejected_until[u] <= now] or \
            [u for u in free if u not in avoid] or free
        if self.policy == "least_outstanding":
            return min(order, key=lambda u: self.outstanding[u])  # ties go to the round-robin order
        return order[0]

    def failed(self, url: str) -> None:
        """An attempt at `url` failed: set it aside, twice as long as last time if its last attempt failed too."""
        self.failures_in_a_row[url] += 1
        seconds = self.eject_s * 2 ** min(self.failures_in_a_row[url] - 1, EJECT_DOUBLINGS)
        self.ejected_until[url] = time.monotonic() + seconds

    def answered(self, url: str) -> None:
        """`url` answered: it is in the rotation again."""
        self.failures_in_a_row[url], self.ejected_until[url] = 0, 0.0

    def throttle(self, url: str, seconds: float) -> None:
        self.busy_until[url] = max(self.busy_until[url], time.monotonic() + seconds)

    def free_in(self) -> float:
        """Seconds until some replica is no longer busy (0 when one is free now)."""
        return max(0.0, min(self.busy_until.values()) - time.monotonic())

    @contextmanager
    def track(self, url: str) -> Iterator[None]:
        self.outstanding[url] += 1
        try:
            yield
        finally:
            self.outstanding[url] -= 1


def retry_after_s(value: str | None) -> float:
    """The wait a 429's `Retry-After` asks for, in seconds or as an HTTP date; `DEFAULT_RETRY_AFTER_S` without one."""
    value = (value or "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER_S


def error_message(body: bytes) -> str:
    """What a remote server's error answer says: OpenAI's `error.message` where there is one, else the text."""
    try:
        data = json.loads(body)
        return str(data.get("error", {}).get("message") or data.get("message") or data)[:500]
    except (ValueError, AttributeError):
        return body[:500].decode(errors="replace")


class _Failed(Exception):
    """One attempt failed at one replica (the message says how)."""


class _Busy(Exception):
    def __init__(self, seconds: float):
        super().__init__(f"busy (429) for {seconds:g} s")
        self.seconds = seconds


class Upstream:
    """POSTs to one of several replicas of a remote server (`role` names it in errors: policy or reward)."""

    def __init__(self, role: Role, urls: Sequence[str], *, balance: Balance = "round_robin", timeout_s: float,
                 retries: int, max_bytes: int = MAX_ANSWER_BYTES, api_key: str | None = None,
                 max_connections: int = 256, eject_s: float = EJECT_S):
        self.role = role
        self.balancer = Balancer(urls, balance, eject_s)
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_bytes = max_bytes
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
                                         headers=headers, limits=httpx.Limits(max_connections=max_connections))

    async def post(self, path: str, payload: dict[str, Any], parse: Callable[[bytes], T]) -> T:
        """`parse` of the first good answer to POST `payload` at `<replica><path>`; `parse` raises ValueError for
        an answer that is not what it expects."""
        failures: list[str] = []
        failed: set[str] = set()
        url: str | None = None
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        # A retry must not take a turn of its own: with two replicas, each call that failed at one and was retried
        # at the other would leave the next call starting at the failed one again, so a dead replica would be
        # asked first by nearly every call instead of every other one.
        turn = self.balancer.next_turn()
        try:
            async with asyncio.timeout_at(deadline):
                for attempt in range(self.retries + 1):
                    url = await self._next(failed, deadline, failures, turn)
                    backoff = 0.0  # a busy replica's wait is its Retry-After, taken in `_next`
                    try:
                        answer = await self._attempt(url, path, payload, parse)
                        self.balancer.answered(url)
                        return answer
                    except RemoteRequestError:  # it refused the request: the replica itself is fine
                        self.balancer.answered(url)
                        raise
                    except _Busy as busy:
                        self.balancer.throttle(url, busy.seconds)
                        failures.append(f"{url}: {busy}")
                    except _Failed as exc:
                        self.balancer.failed(url)
                        failed.add(url)
                        failures.append(f"{url}: {exc}")
                        backoff = min(0.1 * 2**attempt, 2.0)
                    log.warning("%s server: attempt %d failed: %s", self.role, attempt + 1, failures[-1])
                    if attempt < self.retries:
                        await asyncio.sleep(backoff)
        except TimeoutError:
            raise BackendError(f"{self.role} server: no answer within the deadline of {self.timeout_s:g} s (last "
                               f"asked: {url}); {self._tried(failures)}", self.role) from None
        if self.balancer.free_in() > 0:  # the last answers were 429s, and no replica is free yet
            raise self._busy(failures)
        raise BackendError(f"{self.role} server: all {self.retries + 1} attempts failed; {self._tried(failures)}",
                           self.role)

    async def _next(self, failed: Collection[str], deadline: float, failures: list[str], turn: int) -> str:
        """The replica of the next attempt, after waiting out a 429 when every replica is busy and the wait fits."""
        loop = asyncio.get_running_loop()
        while (url := self.balancer.pick(failed, turn)) is None:
            wait = self.balancer.free_in()
            if loop.time() + wait >= deadline:
                raise self._busy(failures)
            await asyncio.sleep(wait)
        return url

    def _busy(self, failures: list[str]) -> UpstreamBusy:
        wait = self.balancer.free_in()
        return UpstreamBusy(f"{self.role} server: every replica is busy for {wait:.1f} s more; "
                            f"{self._tried(failures)}", self.role, retry_after_s=wait)

    @staticmethod
    def _tried(failures: list[str]) -> str:
        return "tried: " + "; ".join(failures) if failures else "no replica was tried"

    async def _attempt(self, url: str, path: str, payload: dict[str, Any], parse: Callable[[bytes], T]) -> T:
        with self.balancer.track(url):
            try:
                async with self._client.stream("POST", url + path, json=payload) as response:
                    if response.status_code == 429:
                        raise _Busy(retry_after_s(response.headers.get("retry-after")))
                    body = await self._read(response)
            except httpx.TransportError as exc:
                raise _Failed(f"{type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status == 200:
            try:
                return parse(body)
            except ValueError as exc:
                reason = " ".join(str(exc).split())[:300]
                raise _Failed(f"malformed answer ({reason}): {body[:300]!r}") from exc
        if 400 <= status < 500 and status not in _NOT_THE_CLIENTS:
            raise RemoteRequestError(error_message(body), self.role)
        raise _Failed(f"HTTP {status}: {error_message(body)}")

    async def _read(self, response: httpx.Response) -> bytes:
        too_long = _Failed(f"HTTP {response.status_code} with an answer over {self.max_bytes} bytes")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise too_long
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise too_long
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        await self._client.aclose()
