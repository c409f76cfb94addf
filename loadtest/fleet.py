"""The scale-out topology of docs/deploy.md as processes on one machine, load-tested while a policy replica dies.

    python -m loadtest.fleet --policy checkpoints/sft --reward checkpoints/rm --out runs/fleet.json

Each on a free port, it starts `--replicas` vLLM OpenAI servers of the policy (`vllm serve`), one vLLM server of
the reward model (the pooling runner), `--front-ends` bon front ends using them all (`--policy-backend openai` with
every replica, `--reward-backend remote` on the RM's `/classify`), and one more bon front end with the first
replica alone: the baseline. Servers already running can stand in for some of the vLLM servers (`--replica-url`,
before the ones started; `--reward-url`): they serve the same checkpoints under their directories' names, and the
fleet uses them but never stops or kills them. Then, one after another, `--concurrency` clients send best_of=N
requests in a closed loop (each sends its next request when its last one is answered):

- warm-up: a few requests through every front end, so that every replica has served before anything is measured;
- single: every client on the baseline, one front end and one replica, for `--phase` seconds;
- fleet: client i on front end i mod F, for as long;
- failover: as fleet, while the last replica is killed with SIGKILL, engine processes and all, as a container dies
  (at the first moment after `--kill-after` seconds that it has requests running, so that some die with it), then
  started again on its port. The phase ends once the restarted replica has finished `--after-restart` sequences:
  the load spans the replica's absence and its return.

The report (JSON, written atomically) gives each phase's figures as `bon loadtest` computes them (throughput,
latency percentiles, errors by status), the answers by front end and the sequences each replica finished, the
fleet's throughput and latency over the single replica's, and the failover's events: when the replica was killed
and how many requests it was running, when it was back, the requests sent while it was away, and the attempts the
front ends retried on another replica. The exit status is 1 when any request failed or the replica never came
back to serve. Each server's output goes to a log beside the report.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import random
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from common.cli import script_logging
from common.files import write_atomic
from common.servers import BON_SERVE, VLLM_SERVE, Server, free_port, start_server
from loadtest.client import RequestRecord, RequestSpec, send
from loadtest.prompts import Messages, builtin
from loadtest.stats import summarize

log = logging.getLogger("loadtest.fleet")

SERVER_ENV = {"VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
              "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
"""Defaults of every server's environment, which overrides them. vLLM's CPU build would otherwise pin each server's
worker to the first core of the NUMA node: every replica on one machine on the same core."""
RETRY_LINE = "policy server: attempt"
"""How models/upstream.py begins the warning it logs for each failed attempt at a policy replica."""


@dataclass
class FleetConfig:
    policy: Path
    """Policy checkpoint directory (Hugging Face format) that every replica serves."""
    reward: Path
    """Reward-model checkpoint directory (a sequence-classification model) that the RM server serves."""
    out: Path
    """The report; the servers' logs go to `<out without .json>-logs/`."""
    replicas: int = 2
    """Policy replicas this run starts; the last of them is the one killed."""
    replica_urls: tuple[str, ...] = ()
    """Policy replicas already running (vLLM OpenAI servers of `policy`), used before the ones started."""
    reward_url: str | None = None
    """A vLLM pooling server of `reward` already running, instead of one this run starts."""
    front_ends: int = 2
    concurrency: int = 4
    """Clients, each on one front end."""
    best_of: int = 4
    max_tokens: int = 16
    phase_s: float = 15.0
    """How long the single and fleet phases send requests (the ones in flight then finish)."""
    kill_after_s: float = 3.0
    """Seconds into the failover phase before the replica may be killed."""
    after_restart: int = 8
    """Sequences the restarted replica finishes before the failover phase ends (a best_of=N request is N)."""
    vllm_command: tuple[str, ...] = VLLM_SERVE
    vllm_args: tuple[str, ...] = ("--enforce-eager", "--max-model-len", "256", "--kv-cache-memory-bytes",
                                  str(64 << 20))
    """Arguments of every vLLM server. The defaults fit a small model on CPUs: no compilation (it only slows the
    start), and 64 MiB of KV cache rather than the CPU build's share of the machine's memory."""
    bon_command: tuple[str, ...] = BON_SERVE
    start_timeout_s: float = 600.0
    """Longest wait for a server to answer, at the start and after the restart."""
    request_timeout_s: float = 120.0
    slo_s: float = 5.0
    """Latency target of the goodput figure, as `bon loadtest --slo`."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.replicas + len(self.replica_urls) < 2:
            raise ValueError("failover needs at least two replicas, one of them started here (it is killed)")
        if not 1 <= self.front_ends <= self.concurrency:
            raise ValueError("at least one front end, and a client for each")
        if min(self.best_of, self.max_tokens, self.after_restart) < 1 or min(self.phase_s, self.kill_after_s) < 0:
            raise ValueError("best_of, max_tokens and after_restart must be positive, durations not negative")
        for path in (self.policy, self.reward):
            if not path.is_dir():
                raise ValueError(f"{path} is not a checkpoint directory")

    @property
    def log_dir(self) -> Path:
        return self.out.with_name(f"{self.out.stem}-logs")


# ---------------------------------------------------------------------------------------------------------
# Processes


def process_tree(pid: int) -> list[int]:
    """`pid` and every process under it, from /proc (Linux): a vLLM server's engine core and workers are its
    children, and outlive it when it alone is killed."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # "pid (comm) state ppid ..."
        except (OSError, IndexError, ValueError):  # ended while we looked
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree = [pid]
    for member in tree:  # the list grows as it is walked: breadth first
        tree.extend(children.get(member, []))
    return tree


def _kill(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Fleet:
    """The fleet's processes by name; `stop` ends them all."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.env = SERVER_ENV | dict(os.environ)
        self.commands: dict[str, list[str]] = {}
        self.servers: dict[str, Server] = {}

    def start(self, name: str, command: Sequence[str]) -> Server:
        """`command` listening on a free port, its output in `<log_dir>/<name>.log`; call `wait` before using it."""
        port = free_port()
        self.commands[name] = [*command, "--port", str(port)]
        server = start_server(self.commands[name], f"http://127.0.0.1:{port}", self.log_dir / f"{name}.log",
                              env=self.env)
        self.servers[name] = server
        return server

    def kill(self, name: str) -> None:
        """SIGKILL the server and every process under it at once."""
        server = self.servers[name]
        _kill(process_tree(server.process.pid))
        server.process.wait()

    def restart(self, name: str) -> Server:
        """The killed server's command again, on its port, logging to `<name>.restarted.log`."""
        server = start_server(self.commands[name], self.servers[name].url,
                              self.log_dir / f"{name}.restarted.log", env=self.env)
        self.servers[name] = server
        return server

    def stop(self) -> None:
        """SIGTERM every server, wait for each (SIGKILL past its grace), then SIGKILL whatever was under it: a vLLM
        engine core outlives a server that had to be killed."""
        running = [s for s in self.servers.values() if s.process.poll() is None]
        trees = [process_tree(s.process.pid)[1:] for s in running]
        for server in running:
            server.process.terminate()  # all at once: they shut down side by side
        for server, tree in zip(running, trees, strict=True):
            server.stop()
            _kill(tree)


def _vllm(cfg: FleetConfig, model: Path, pooling: bool = False) -> list[str]:
    command = [*cfg.vllm_command, "--model", str(model), "--served-model-name", model.resolve().name,
               "--host", "127.0.0.1", "--uvicorn-log-level", "warning", *cfg.vllm_args]
    if pooling:
        # float32: the rewards as bon's hf backend computes them; bfloat16 would round close ones to a tie
        command += ["--runner", "pooling", "--dtype", "float32"]
    return command


def _front_end(cfg: FleetConfig, replicas: Sequence[str], rm: str) -> list[str]:
    """A bon front end on the policy replicas and the RM server at these URLs."""
    command = [*cfg.bon_command, "--policy-backend", "openai", "--policy", cfg.policy.resolve().name]
    for replica in replicas:
        command += ["--openai-base-url", replica + "/v1"]
    return [*command, "--openai-tokenizer", str(cfg.policy), "--reward-backend", "remote",
            "--reward-url", rm + "/classify", "--reward-model", cfg.reward.resolve().name,
            "--default-best-of", str(cfg.best_of), "--max-best-of", str(max(cfg.best_of, 32)),
            "--upstream-timeout-s", str(cfg.request_timeout_s), "--log-level", "warning", "--no-access-log"]


# ---------------------------------------------------------------------------------------------------------
# Load and readings


async def vllm_metric(client: httpx.AsyncClient, url: str, name: str, labels: Sequence[str] = ()) -> float:
    """The sum of the samples of metric `name` at `<url>/metrics` that carry one of `labels` (`key="value"`;
    any sample when empty)."""
    response = await client.get(url + "/metrics")
    response.raise_for_status()
    total = 0.0
    for line in response.text.splitlines():
        if line.startswith(name + "{") and (not labels or any(label in line for label in labels)):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def finished_sequences(client: httpx.AsyncClient, url: str) -> int:
    """Sequences the vLLM server at `url` has finished since it started, stopped or cut at max_tokens."""
    return int(await vllm_metric(client, url, "vllm:request_success_total",
                                 ('finished_reason="stop"', 'finished_reason="length"')))


def retried_attempts(log_dir: Path, names: Sequence[str]) -> int:
    """Failed attempts at a policy replica that the named front ends logged so far (each was tried again)."""
    return sum((log_dir / f"{name}.log").read_text(errors="replace").count(RETRY_LINE) for name in names)


class Load:
    """Closed-loop clients over front ends; one `run` per phase."""

    def __init__(self, cfg: FleetConfig, client: httpx.AsyncClient, model: str):
        self.cfg, self.client, self.model = cfg, client, model
        prompts: list[Messages] = builtin()
        random.Random(cfg.seed).shuffle(prompts)
        self.prompts = prompts
        self._prompt = itertools.count()
        """Prompts go in turn across phases."""

    async def run(self, front_ends: dict[str, Server], stop: Callable[[float, int], bool], concurrency: int,
                  t0: float | None = None) -> tuple[dict[str, list[RequestRecord]], float]:
        """Client i sends to front end i mod F until `stop(seconds since t0, requests sent)`; then the ones in
        flight finish. The requests by front end, and the seconds from `t0` (now unless given) to the last answer."""
        t0 = time.perf_counter() if t0 is None else t0
        records: dict[str, list[RequestRecord]] = {name: [] for name in front_ends}

        async def client(name: str) -> None:
            while not stop(time.perf_counter() - t0, sent := sum(map(len, records.values()))):
                record = RequestRecord(request_id=sent, best_of=self.cfg.best_of)
                records[name].append(record)  # counted before the await, so no client overshoots `stop`
                spec = RequestSpec(model=self.model, messages=self.prompts[next(self._prompt) % len(self.prompts)],
                                   best_of=self.cfg.best_of, max_tokens=self.cfg.max_tokens)
                await send(self.client, front_ends[name].url + "/v1/chat/completions", spec, record,
                           self.cfg.request_timeout_s, t0)

        names = list(front_ends)
        await asyncio.gather(*(client(names[i % len(names)]) for i in range(concurrency)))
        return records, time.perf_counter() - t0

    def figures(self, records: dict[str, list[RequestRecord]], wall: float) -> dict[str, Any]:
        every = [r for rs in records.values() for r in rs]
        failed = [{"front_end": name, "start_s": round(r.start, 3), "status": r.status, "error": r.error}
                  for name, rs in records.items() for r in rs if not r.ok]
        return {"front_ends": list(records), "figures": summarize(every, wall, self.cfg.slo_s),
                "answered_by_front_end": {name: sum(r.ok for r in rs) for name, rs in records.items()},
                "failed": failed[:20]}


# ---------------------------------------------------------------------------------------------------------
# The run


class FleetRun:
    def __init__(self, cfg: FleetConfig):
        self.cfg = cfg
        self.fleet = Fleet(cfg.log_dir)
        given = len(cfg.replica_urls)
        self.replicas = [f"replica-{i}" for i in range(given + cfg.replicas)]
        self.started_replicas = self.replicas[given:]
        self.front_ends = [f"front-end-{i}" for i in range(cfg.front_ends)]
        self.urls: dict[str, str] = dict(zip(self.replicas, cfg.replica_urls, strict=False))
        """Where each replica and the RM (`rm`) listen, filled in as they start."""
        if cfg.reward_url is not None:
            self.urls["rm"] = cfg.reward_url

    def start(self) -> dict[str, float]:
        """Every server, ready; seconds the vLLM servers and then the front ends took to start."""
        cfg, fleet = self.cfg, self.fleet
        started = time.monotonic()
        engines = [fleet.start(name, _vllm(cfg, cfg.policy)) for name in self.started_replicas]
        if cfg.reward_url is None:
            engines.append(fleet.start("rm", _vllm(cfg, cfg.reward, pooling=True)))
        for server in engines:
            server.wait("/v1/models", cfg.start_timeout_s)  # vLLM listens only once its engine is up
        self.urls.update((name, server.url) for name, server in fleet.servers.items())
        vllm_s = time.monotonic() - started
        replicas = [self.urls[name] for name in self.replicas]
        fronts = [fleet.start(name, _front_end(cfg, replicas, self.urls["rm"])) for name in self.front_ends]
        fronts.append(fleet.start("baseline", _front_end(cfg, replicas[:1], self.urls["rm"])))
        for server in fronts:
            server.wait("/ready", cfg.start_timeout_s)
        return {"vllm_s": round(vllm_s, 3), "front_ends_s": round(time.monotonic() - started - vllm_s, 3)}

    def _servers(self, names: Sequence[str]) -> dict[str, Server]:
        return {name: self.fleet.servers[name] for name in names}

    async def _sequences(self, client: httpx.AsyncClient) -> dict[str, int]:
        return {name: await finished_sequences(client, self.urls[name]) for name in self.replicas}

    async def _measured(self, load: Load, client: httpx.AsyncClient, names: Sequence[str]) -> dict[str, Any]:
        before = await self._sequences(client)
        records, wall = await load.run(self._servers(names), lambda elapsed, _: elapsed >= self.cfg.phase_s,
                                       self.cfg.concurrency)
        after = await self._sequences(client)
        return {**load.figures(records, wall),
                "sequences_by_replica": {name: after[name] - before[name] for name in self.replicas}}

    async def _failover(self, load: Load, client: httpx.AsyncClient) -> dict[str, Any]:
        cfg, victim = self.cfg, self.replicas[-1]
        events: dict[str, Any] = {"replica": victim}
        done = asyncio.Event()
        retried_before = retried_attempts(cfg.log_dir, self.front_ends)
        t0 = time.perf_counter()

        def at() -> float:
            return round(time.perf_counter() - t0, 3)

        async def chaos() -> None:
            try:
                await asyncio.sleep(cfg.kill_after_s)
                url = self.urls[victim]
                deadline = time.perf_counter() + max(cfg.phase_s, 10.0)
                while (running := await vllm_metric(client, url, "vllm:num_requests_running")) == 0 \
                        and time.perf_counter() < deadline:
                    await asyncio.sleep(0.02)
                self.fleet.kill(victim)
                events.update(killed_at_s=at(), running_at_kill=int(running))
                restarted = self.fleet.restart(victim)
                await asyncio.to_thread(restarted.wait, "/v1/models", cfg.start_timeout_s)
                events["back_at_s"] = at()
                deadline = time.perf_counter() + cfg.start_timeout_s
                while (served := await finished_sequences(client, url)) < cfg.after_restart:
                    if time.perf_counter() > deadline:
                        raise TimeoutError(f"the restarted replica finished {served} sequences in "
                                           f"{cfg.start_timeout_s:g} s")
                    await asyncio.sleep(0.1)
                events.update(served_after_restart=served, served_by_s=at())
            except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
                events["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                log.error("failover: %s", events["error"])
            finally:
                done.set()

        (records, wall), _ = await asyncio.gather(
            load.run(self._servers(self.front_ends), lambda *_: done.is_set(), cfg.concurrency, t0), chaos())
        if "back_at_s" in events:
            away = [r for rs in records.values() for r in rs if events["killed_at_s"] <= r.start < events["back_at_s"]]
            events.update(away_s=round(events["back_at_s"] - events["killed_at_s"], 3), sent_while_away=len(away),
                          failed_while_away=sum(not r.ok for r in away))
        events["retried_attempts"] = retried_attempts(cfg.log_dir, self.front_ends) - retried_before
        return {**load.figures(records, wall), "events": events}

    async def phases(self) -> dict[str, dict[str, Any]]:
        cfg = self.cfg
        async with httpx.AsyncClient(timeout=httpx.Timeout(cfg.request_timeout_s)) as client:
            load = Load(cfg, client, cfg.policy.resolve().name)
            # A client per front end, about `replicas` requests each: each front end's round robin reaches every
            # replica it has.
            every = [*self.front_ends, "baseline"]
            records, wall = await load.run(self._servers(every), lambda _, sent: sent >= len(every) * cfg.replicas,
                                           len(every))
            return {"warm_up": load.figures(records, wall),
                    "single": await self._measured(load, client, ["baseline"]),
                    "fleet": await self._measured(load, client, self.front_ends),
                    "failover": await self._failover(load, client)}


def compare(single: dict[str, Any], fleet: dict[str, Any]) -> dict[str, float | None]:
    """The fleet's throughput and latency percentiles over the single replica's."""
    ours, theirs = fleet["figures"], single["figures"]

    def ratio(key: str) -> float | None:
        return ours[key] / theirs[key] if ours[key] is not None and theirs[key] else None

    return {f"{key}_ratio": ratio(key) for key in ("throughput_rps", "latency_s_p50", "latency_s_p99")}


def run(cfg: FleetConfig) -> dict[str, Any]:
    """Start the fleet, run the phases, stop it; the report."""
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    started_at, started = time.time(), time.monotonic()
    fleet_run = FleetRun(cfg)
    try:
        startup = fleet_run.start()
        phases = asyncio.run(fleet_run.phases())
    finally:
        fleet_run.fleet.stop()
    events = phases["failover"]["events"]
    failed = sum(p["figures"]["errors"] for p in phases.values())
    return {
        "config": {**asdict(cfg), "policy": str(cfg.policy), "reward": str(cfg.reward), "out": str(cfg.out)},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "wall_s": round(time.monotonic() - started, 3),
        "startup": startup,
        "phases": phases,
        "fleet_over_single": compare(phases["single"], phases["fleet"]),
        "failed_requests": failed,
        "ok": failed == 0 and events.get("served_after_restart", 0) >= cfg.after_restart,
        "logs": str(cfg.log_dir),
    }


def summary_line(report: dict[str, Any]) -> str:
    """What a person reads first: each phase's throughput and latency, and the failover's outcome."""
    parts = []
    for name in ("single", "fleet", "failover"):
        f = report["phases"][name]["figures"]
        parts.append(f"{name}: {f['answered']}/{f['sent']} answered, {f['throughput_rps']:.2f} req/s, "
                     f"p50 {f['latency_s_p50'] or 0:.2f} s, p99 {f['latency_s_p99'] or 0:.2f} s")
    events = report["phases"]["failover"]["events"]
    outcome = (f"replica killed with {events.get('running_at_kill')} requests running, back after "
               f"{events.get('away_s')} s, {events.get('sent_while_away')} requests sent meanwhile, "
               f"{events.get('retried_attempts')} attempts retried, {report['failed_requests']} requests failed")
    if "error" in events:
        outcome += f" ({events['error'][:200]})"
    return "; ".join(parts) + f"\nfailover: {outcome}; {report['wall_s']:.0f} s in all"


def parse_args(argv: Sequence[str] | None = None) -> FleetConfig:
    p = argparse.ArgumentParser(prog="python -m loadtest.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", type=Path, required=True, help="policy checkpoint directory (Hugging Face format)")
    p.add_argument("--reward", type=Path, required=True, help="reward-model checkpoint directory")
    p.add_argument("--out", type=Path, default=None, help="report path (default runs/fleet-<timestamp>.json)")
    p.add_argument("--replicas", type=int, default=2,
                   help="vLLM servers of the policy to start; the last one is killed and restarted")
    p.add_argument("--replica-url", action="append", default=[],
                   help="a vLLM server of the policy already running, used as a replica first (repeatable)")
    p.add_argument("--reward-url", default=None,
                   help="a vLLM pooling server of the reward model already running, used instead of starting one")
    p.add_argument("--front-ends", type=int, default=2, help="bon front ends using every replica")
    p.add_argument("--concurrency", type=int, default=4, help="clients, spread over the front ends")
    p.add_argument("--best-of", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--phase", type=float, default=15.0, help="seconds of the single and fleet phases")
    p.add_argument("--kill-after", type=float, default=3.0, help="seconds into the failover phase before the kill")
    p.add_argument("--after-restart", type=int, default=8,
                   help="sequences the restarted replica finishes before the failover phase ends")
    p.add_argument("--vllm-command", type=shlex.split, default=list(VLLM_SERVE),
                   help="how to start vLLM's OpenAI server (default: this Python's vllm.entrypoints.openai.api_server)")
    p.add_argument("--vllm-args", type=shlex.split, default=None,
                   help=f"arguments of every vLLM server (default: {shlex.join(FleetConfig.vllm_args)!r})")
    p.add_argument("--start-timeout", type=float, default=600.0, help="longest wait for a server to answer (s)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    p.add_argument("--seed", type=int, default=0, help="prompt order")
    args = p.parse_args(argv)
    optional = {"vllm_args": tuple(args.vllm_args)} if args.vllm_args is not None else {}
    try:
        return FleetConfig(policy=args.policy, reward=args.reward,
                           out=args.out or Path("runs") / f"fleet-{time.strftime('%Y%m%d-%H%M%S')}.json",
                           replicas=args.replicas, replica_urls=tuple(u.rstrip("/") for u in args.replica_url),
                           reward_url=args.reward_url and args.reward_url.rstrip("/"), front_ends=args.front_ends,
                           concurrency=args.concurrency,
                           best_of=args.best_of, max_tokens=args.max_tokens, phase_s=args.phase,
                           kill_after_s=args.kill_after, after_restart=args.after_restart,
                           vllm_command=tuple(args.vllm_command), start_timeout_s=args.start_timeout,
                           request_timeout_s=args.timeout, seed=args.seed, **optional)
    except ValueError as exc:
        p.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    script_logging()
    report = run(cfg)
    write_atomic(cfg.out, json.dumps(report, indent=2) + "\n")
    sys.stdout.write(f"{summary_line(report)}\nreport: {cfg.out}\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
