"""Soak test: minutes of mixed load against a running server, with hot swaps, watching its process for leaks.

    python -m loadtest.soak --url http://127.0.0.1:8000 --pid 1234 --admin-key KEY --minutes 10 --out soak.json

`--concurrency` clients send one request after another for the whole run, each drawn from a seeded mix:
chat completions and completions, streamed and not, at best_of drawn from `--best-of`; bad requests (malformed
JSON, missing or out-of-range fields, an unknown model), each of which must get a 4xx in the OpenAI error
envelope; and requests the client abandons (a stream closed after its first event, a plain request cancelled
after a moment), which the server must absorb. Every `--swap-every` seconds the admin API loads the next of
`--swap-policy`'s checkpoints as that policy, rolls it back, or loads the next `--swap-reward` checkpoint as the
reward model, in turn.

The server process's resident memory (VmRSS), open file descriptors and threads are read from /proc/<pid> at
the start, every `--sample-every` seconds, and at the end, so a leak shows as drift between the two ends. The
report (JSON, written atomically) counts requests by kind and outcome, errors by kind (any 5xx, a refused good
request, an accepted bad one, a transport failure, a malformed answer, a failed swap), and gives latency and
time-to-first-token percentiles of the answered requests. The exit status is 1 when any error was counted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from common.cli import script_logging
from common.files import write_atomic
from loadtest.client import RequestRecord, RequestSpec, send
from loadtest.prompts import BUILTIN, as_messages
from loadtest.stats import percentiles

log = logging.getLogger("loadtest.soak")

GOOD_KINDS = ("chat", "chat-stream", "completion", "completion-stream")
KINDS = (*GOOD_KINDS, "bad", "disconnect")


@dataclass
class SoakConfig:
    """What one soak run sends, for how long, and what it watches."""

    url: str
    """Server base URL (http://host:port)."""
    duration_s: float = 600.0
    """How long new requests are sent; the ones in flight then finish."""
    pid: int | None = None
    """The server's process id, whose memory, descriptors and threads are read from /proc (same machine)."""
    concurrency: int = 4
    """Clients, each sending its next request when its last one is done."""
    best_of: tuple[int, ...] = (1, 2, 4, 8)
    """best_of values drawn for the good requests."""
    max_tokens: int = 16
    """max_tokens of every good request."""
    bad_share: float = 0.1
    """Share of requests that are bad on purpose."""
    disconnect_share: float = 0.1
    """Share of requests the client abandons."""
    completion_share: float = 0.3
    """Share of the good requests sent to /v1/completions (the rest to /v1/chat/completions)."""
    stream_share: float = 0.5
    """Share of the good requests that stream."""
    api_key: str | None = None
    """Bearer key of the completion routes, when the server has one."""
    admin_key: str | None = None
    """The server's admin key: swaps need it."""
    swap_every_s: float = 30.0
    """Seconds between admin swaps."""
    swap_policy: str | None = None
    """The policy name swaps load into: `name=ckpt,ckpt,...` cycles it through those checkpoints (registry names)."""
    swap_reward: tuple[str, ...] = ()
    """Reward-model checkpoints (registry names) swapped in, in turn."""
    sample_every_s: float = 10.0
    """Seconds between readings of the server process (besides the first and the last)."""
    timeout_s: float = 120.0
    """Per request, end to end."""
    seed: int = 0
    """Seed of the mix: request kinds, models, prompts, best_of and disconnect delays."""

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.concurrency < 1 or self.swap_every_s <= 0 or self.sample_every_s <= 0:
            raise ValueError("duration, concurrency, swap and sample intervals must be positive")
        if not 0 <= self.bad_share + self.disconnect_share <= 1:
            raise ValueError("bad_share + disconnect_share must be within [0, 1]")
        if self.swap_policy is not None and "=" not in self.swap_policy:
            raise ValueError("swap_policy is NAME=CHECKPOINT[,CHECKPOINT...]")
        if (self.swap_policy or self.swap_reward) and not self.admin_key:
            raise ValueError("swaps go through the admin API: give the server's admin key")


# ---------------------------------------------------------------------------------------------------------
# The server process, from /proc


def read_process(pid: int) -> dict[str, int]:
    """Resident memory (bytes), open file descriptors and threads of process `pid` now."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_bytes": int(fields["VmRSS"].split()[0]) * 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(fields["Threads"])}


class ProcessWatch:
    """Readings of the server process over the run; `error` says why there are none (no pid, not readable)."""

    def __init__(self, pid: int | None):
        self.pid = pid
        self.samples: list[dict[str, float]] = []
        self.error: str | None = None if pid is not None else "no --pid given"
        self._t0 = time.monotonic()

    def sample(self) -> None:
        if self.pid is None:
            return
        try:
            reading = read_process(self.pid)
        except (OSError, KeyError, ValueError) as exc:  # gone, or another user's process
            self.error = f"cannot read /proc/{self.pid}: {exc}"
            return
        self.samples.append({"t_s": round(time.monotonic() - self._t0, 3), **reading})

    def report(self) -> dict[str, Any]:
        if not self.samples:
            return {"pid": self.pid, "read": False, "error": self.error}
        start, end = self.samples[0], self.samples[-1]
        keys = ("rss_bytes", "fds", "threads")
        return {"pid": self.pid, "read": True, "error": self.error, "start": start, "end": end,
                "peak": {k: max(s[k] for s in self.samples) for k in keys},
                "drift": {k: end[k] - start[k] for k in keys}, "samples": self.samples}


# ---------------------------------------------------------------------------------------------------------
# Requests


@dataclass
class Outcome:
    """One request as the soak saw it."""

    kind: str
    model: str
    best_of: int = 0
    status: str = ""
    """The HTTP status, or what happened instead: timeout, connect, read, bad_response, stream_error, or
    abandoned (a request the client gave up on before its answer, on purpose)."""
    error: str | None = None
    """The error kind when this request counts as one (see `_error_kind`), None when it went as it should."""
    latency_s: float | None = None
    ttft_s: float | None = None
    detail: str = ""


def _error_kind(kind: str, status: str, enveloped: bool = True) -> str | None:
    """Whether, and how, a request's outcome is an error: every 5xx, and transport or parse failures, always; for
    a good request anything but 200; for a bad one anything but a 4xx in the error envelope."""
    if status == "abandoned" and kind == "disconnect":
        return None
    if not status.isdigit():
        return status
    code = int(status)
    if kind == "bad" and code < 500:
        if code < 400:
            return "bad_request_accepted"
        return None if enveloped else "no_error_envelope"
    return None if code == 200 else f"http_{code}"


def _bad_bodies(model: str) -> list[tuple[str, bytes]]:
    """(route, body) pairs that a server must refuse with a 4xx."""
    hi = [{"role": "user", "content": "Hi"}]

    def body(**fields: object) -> bytes:
        return json.dumps(fields).encode()

    return [
        ("/v1/chat/completions", b'{"model": "' + model.encode() + b'", "messages": [{"role": "user"'),
        ("/v1/chat/completions", body(model=model)),
        ("/v1/chat/completions", body(model=model, messages=[])),
        ("/v1/chat/completions", body(model=model, messages=hi, best_of=1_000_000)),
        ("/v1/chat/completions", body(model=model, messages=hi, max_tokens=-5)),
        ("/v1/chat/completions", body(model=model, messages=hi, temperature="hot")),
        ("/v1/chat/completions", body(model="no-such-model", messages=hi)),
        ("/v1/chat/completions", b"[]"),
        ("/v1/completions", body(model=model, prompt={"not": "text"})),
        ("/v1/completions", body(model=model, prompt="Hi", n=0)),
    ]


class Soak:
    """One soak run: the clients, the swapper and the process watch, and what each of them saw."""

    def __init__(self, config: SoakConfig, models: Sequence[str]):
        self.config = config
        self.models = list(models)
        self.rng = random.Random(config.seed)
        self.outcomes: list[Outcome] = []
        self.swaps: list[dict[str, Any]] = []
        self.watch = ProcessWatch(config.pid)
        self.t0 = 0.0

    def _good(self, kind: str, model: str) -> RequestSpec:
        prompt = self.rng.choice(BUILTIN)
        return RequestSpec(model=model, messages=prompt if kind.startswith("completion") else as_messages(prompt),
                           best_of=self.rng.choice(self.config.best_of), stream=kind.endswith("-stream"),
                           max_tokens=self.config.max_tokens)

    def _draw_kind(self) -> str:
        c, u = self.config, self.rng.random()
        if u < c.bad_share:
            return "bad"
        if u < c.bad_share + c.disconnect_share:
            return "disconnect"
        route = "completion" if self.rng.random() < c.completion_share else "chat"
        return f"{route}-stream" if self.rng.random() < c.stream_share else route

    async def _send_good(self, client: httpx.AsyncClient, kind: str, model: str) -> Outcome:
        spec = self._good(kind, model)
        route = "/v1/completions" if kind.startswith("completion") else "/v1/chat/completions"
        record = await send(client, self.config.url + route, spec, RequestRecord(0, spec.best_of),
                            self.config.timeout_s)
        return Outcome(kind, model, spec.best_of, record.status, _error_kind(kind, record.status), record.latency,
                       record.ttft, record.error)

    async def _send_bad(self, client: httpx.AsyncClient, model: str) -> Outcome:
        route, body = self.rng.choice(_bad_bodies(model))
        outcome = Outcome("bad", model, detail=f"{route} {body[:80].decode(errors='replace')}")
        enveloped = False
        try:
            response = await client.post(self.config.url + route, content=body,
                                         headers={"Content-Type": "application/json"}, timeout=self.config.timeout_s)
        except httpx.HTTPError as exc:
            outcome.status, outcome.detail = _transport_failure(exc), f"{type(exc).__name__}: {exc}"[:200]
        else:
            outcome.status, enveloped = str(response.status_code), _enveloped(response)
            outcome.detail += f" -> {response.text[:200]}"
        outcome.error = _error_kind("bad", outcome.status, enveloped)
        return outcome

    async def _disconnect(self, client: httpx.AsyncClient, model: str) -> Outcome:
        """A stream closed after its first event, or a plain request cancelled after 50–500 ms."""
        stream = self.rng.random() < 0.5
        spec = self._good("chat-stream" if stream else "chat", model)
        outcome = Outcome("disconnect", model, spec.best_of, detail="stream closed" if stream else "cancelled")
        url = self.config.url + "/v1/chat/completions"
        try:
            if stream:
                async with client.stream("POST", url, json=spec.body(), timeout=self.config.timeout_s) as response:
                    outcome.status = str(response.status_code)
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            outcome.status = "abandoned"
                            break  # leaves the block: the connection is closed mid-answer
            else:
                cancel_after = self.rng.uniform(0.05, 0.5)
                try:
                    response = await asyncio.wait_for(client.post(url, json=spec.body()), cancel_after)
                    outcome.status = str(response.status_code)
                except TimeoutError:
                    outcome.status = "abandoned"
        except httpx.HTTPError as exc:
            outcome.status, outcome.detail = _transport_failure(exc), f"{type(exc).__name__}: {exc}"[:200]
        outcome.error = _error_kind("disconnect", outcome.status)
        return outcome

    async def _client(self, client: httpx.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            kind, model = self._draw_kind(), self.rng.choice(self.models)
            if kind == "bad":
                outcome = await self._send_bad(client, model)
            elif kind == "disconnect":
                outcome = await self._disconnect(client, model)
            else:
                outcome = await self._send_good(client, kind, model)
            if outcome.error:
                log.warning("%s request to %s: %s %s", outcome.kind, outcome.model, outcome.error, outcome.detail)
            self.outcomes.append(outcome)

    def _swap_actions(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        """The admin calls of one cycle: (method, path, body)."""
        actions: list[tuple[str, str, dict[str, Any] | None]] = []
        if self.config.swap_policy:
            name, checkpoints = self.config.swap_policy.split("=", 1)
            actions += [("POST", f"/admin/policies/{name}", {"checkpoint": c}) for c in checkpoints.split(",")]
            actions.append(("POST", f"/admin/policies/{name}/rollback", None))
        actions += [("POST", "/admin/reward", {"checkpoint": c}) for c in self.config.swap_reward]
        return actions

    async def _swapper(self, admin: httpx.AsyncClient, until: float) -> None:
        actions = self._swap_actions()
        if not actions:
            return
        for i in itertools.count():
            next_at = self.t0 + (i + 1) * self.config.swap_every_s
            if next_at >= until:
                return
            await asyncio.sleep(next_at - time.monotonic())
            method, path, body = actions[i % len(actions)]
            started = time.monotonic()
            record: dict[str, Any] = {"at_s": round(started - self.t0, 3), "call": f"{method} {path}",
                                      "checkpoint": (body or {}).get("checkpoint")}
            try:
                response = await admin.request(method, path, json=body)
                record["status"] = str(response.status_code)
                answer = response.json() if response.status_code == 200 else {}
                record["version"] = answer.get("version")
                if response.status_code != 200:
                    record["error"] = response.text[:300]
            except (httpx.HTTPError, ValueError) as exc:
                record["status"], record["error"] = "read", f"{type(exc).__name__}: {exc}"[:300]
            record["seconds"] = round(time.monotonic() - started, 3)
            if record["status"] != "200":
                log.warning("swap %s failed: %s", record["call"], record.get("error"))
            self.swaps.append(record)

    async def _sampler(self, until: float) -> None:
        while time.monotonic() + self.config.sample_every_s < until:
            await asyncio.sleep(self.config.sample_every_s)
            self.watch.sample()

    async def run(self) -> dict[str, Any]:
        c = self.config
        headers = {"Authorization": f"Bearer {c.api_key}"} if c.api_key else {}
        admin_headers = {"Authorization": f"Bearer {c.admin_key}"} if c.admin_key else {}
        self.watch.sample()
        started_at = time.time()
        self.t0 = time.monotonic()
        until = self.t0 + c.duration_s
        limits = httpx.Limits(max_connections=c.concurrency, max_keepalive_connections=c.concurrency)
        async with httpx.AsyncClient(timeout=httpx.Timeout(c.timeout_s), limits=limits, headers=headers) as client, \
                httpx.AsyncClient(base_url=c.url, timeout=httpx.Timeout(600.0), headers=admin_headers) as admin:
            await asyncio.gather(self._swapper(admin, until), self._sampler(until),
                                 *(self._client(client, until) for _ in range(c.concurrency)))
        wall = time.monotonic() - self.t0
        self.watch.sample()
        return self.report(started_at, wall)

    def report(self, started_at: float, wall: float) -> dict[str, Any]:
        outcomes = self.outcomes
        errors = Counter(o.error for o in outcomes if o.error)
        errors.update("swap_failed" for s in self.swaps if s["status"] != "200")
        answered = [o for o in outcomes if o.kind in GOOD_KINDS and not o.error]
        by_kind = {kind: {"sent": sum(o.kind == kind for o in outcomes),
                          "statuses": dict(sorted(Counter(o.status for o in outcomes if o.kind == kind).items())),
                          "errors": sum(bool(o.error) for o in outcomes if o.kind == kind)} for kind in KINDS}
        examples = [asdict(o) for o in outcomes if o.error][:20]
        config = asdict(self.config) | {"models": self.models}
        for secret in ("admin_key", "api_key"):
            del config[secret]
        return {
            "config": config,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
            "wall_s": round(wall, 3),
            "requests": {"sent": len(outcomes), "answered": len(answered), "by_kind": by_kind},
            "errors": {"total": sum(errors.values()), "by_kind": dict(sorted(errors.items())),
                       "server_5xx": sum(n for kind, n in errors.items() if kind.startswith("http_5")),
                       "examples": examples},
            "latency_s": {"all": _dist([o.latency_s for o in answered]),
                          **{kind: _dist([o.latency_s for o in answered if o.kind == kind]) for kind in GOOD_KINDS}},
            "ttft_s": {kind: _dist([o.ttft_s for o in answered if o.kind == kind])
                       for kind in GOOD_KINDS if kind.endswith("-stream")},
            "swaps": {"done": len(self.swaps), "ok": sum(s["status"] == "200" for s in self.swaps),
                      "records": self.swaps},
            "server": self.watch.report(),
        }


def _transport_failure(exc: httpx.HTTPError) -> str:
    """The status `loadtest.client.send` gives the same failure."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return "connect" if isinstance(exc, httpx.ConnectError) else "read"


def _enveloped(response: httpx.Response) -> bool:
    """Whether an error answer is OpenAI's envelope: {"error": {"message", "type", "param", "code"}}."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)


def _dist(values: Sequence[float | None]) -> dict[str, float | int | None]:
    data = [v for v in values if v is not None]
    return {"n": len(data), **percentiles(data), "max": max(data) if data else None}


def served_models(config: SoakConfig) -> list[str]:
    """The ids GET /v1/models lists: the policies the load is spread over."""
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    response = httpx.get(config.url + "/v1/models", headers=headers, timeout=30)
    response.raise_for_status()
    return [str(card["id"]) for card in response.json()["data"]]


def write_report(report: dict[str, Any], out: Path) -> None:
    write_atomic(out, json.dumps(report, indent=2) + "\n")


def summary_line(report: dict[str, Any]) -> str:
    """One line a person reads first: requests, errors, and the server's drift."""
    server, latency = report["server"], report["latency_s"]["all"]
    line = (f"{report['requests']['sent']} requests in {report['wall_s']:.0f} s, {report['errors']['total']} errors "
            f"{report['errors']['by_kind']}, {report['swaps']['ok']}/{report['swaps']['done']} swaps ok")
    if latency["n"]:
        line += f", latency p50 {latency['p50']:.3f} s p99 {latency['p99']:.3f} s"
    if server["read"]:
        start, end = server["start"], server["end"]
        line += (f"; server RSS {start['rss_bytes'] / 2**20:.0f} -> {end['rss_bytes'] / 2**20:.0f} MiB, fds "
                 f"{start['fds']} -> {end['fds']}, threads {start['threads']} -> {end['threads']}")
    return line


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument("--pid", type=int, default=None, help="the server's process id (RSS, fds, threads from /proc)")
    p.add_argument("--minutes", type=float, default=10.0, help="how long to send requests (default 10)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--best-of", type=_ints, default=(1, 2, 4, 8), metavar="N,N,…")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--bad-share", type=float, default=0.1)
    p.add_argument("--disconnect-share", type=float, default=0.1)
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    p.add_argument("--admin-key", default=os.environ.get("BON_ADMIN_KEY"), help="needed for swaps ($BON_ADMIN_KEY)")
    p.add_argument("--swap-every", type=float, default=30.0, help="seconds between admin swaps")
    p.add_argument("--swap-policy", default=None, metavar="NAME=CKPT,CKPT",
                   help="load these checkpoints as policy NAME in turn, then roll it back, e.g. dpo=ppo,dpo")
    p.add_argument("--swap-reward", default="", help="reward checkpoints to swap in, in turn, e.g. rm")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between readings of the server process")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="report path (default runs/soak-<timestamp>.json)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    script_logging()
    try:
        config = SoakConfig(url=args.url.rstrip("/").removesuffix("/v1"), duration_s=args.minutes * 60,
                            pid=args.pid, concurrency=args.concurrency, best_of=args.best_of,
                            max_tokens=args.max_tokens, bad_share=args.bad_share,
                            disconnect_share=args.disconnect_share, api_key=args.api_key, admin_key=args.admin_key,
                            swap_every_s=args.swap_every, swap_policy=args.swap_policy,
                            swap_reward=tuple(c for c in args.swap_reward.split(",") if c),
                            sample_every_s=args.sample_every, timeout_s=args.timeout, seed=args.seed)
    except ValueError as exc:
        raise SystemExit(f"python -m loadtest.soak: {exc}") from None
    try:
        models = served_models(config)
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:  # unreachable, refused, or not a model list
        raise SystemExit(f"python -m loadtest.soak: no models from {config.url}/v1/models: {exc}") from None
    if not models:
        raise SystemExit(f"python -m loadtest.soak: {config.url} serves no model")
    report = asyncio.run(Soak(config, models).run())
    out = args.out or Path("runs") / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_report(report, out)
    sys.stdout.write(f"{summary_line(report)}\nreport: {out}\n")
    return 1 if report["errors"]["total"] else 0


if __name__ == "__main__":
    sys.exit(main())
