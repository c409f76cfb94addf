"""Hot swap on the vLLM backend, with real engines (vLLM's CPU build in CI): DPO -> PPO, then a rollback to DPO,
under steady load fail no request, each swap builds a second engine beside the serving one, and the old
engine's processes exit and give their memory back once its last request is answered."""

import asyncio
import json

import httpx
import psutil
import pytest

from models.checkpoint import read_manifest
from tests.builders import Sampler, launch_server, wait_until_async

pytestmark = pytest.mark.vllm

KEY = "vllm-swap-key"
PROMPT = [{"role": "user", "content": "Can you suggest an activity for the old cat?"}]
CLIENTS = 4


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def engine_processes(pid: int) -> set[int]:
    """The server's vLLM engine processes (engine core and workers name themselves VLLM::...)."""
    found = set()
    for process in tree(pid)[1:]:
        try:
            if process.cmdline()[:1] and process.cmdline()[0].startswith("VLLM::"):
                found.add(process.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def running(pids: set[int]) -> list[int]:
    """Those of `pids` still running: an exited process that its parent has not reaped yet (a zombie) holds no
    memory and runs nothing, so it does not count."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def tree_rss(pid: int) -> int:
    total = 0
    for process in tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


async def _exited(engine: set[int]) -> None:
    """Wait until the processes of a closed engine have exited."""
    await wait_until_async(lambda: not running(engine), 60, f"the old engine's processes {sorted(engine)} to exit")


async def _steady_load(url: str, stop: asyncio.Event, answers: list[tuple[int, str]]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while not stop.is_set():
            response = await client.post("/v1/chat/completions", json={
                "model": "live", "messages": PROMPT, "max_tokens": 8, "best_of": 4})
            version = response.json()["bon"]["policy_version"] if response.status_code == 200 else response.text
            answers.append((response.status_code, version))


def test_dpo_ppo_swaps_and_rollback_under_load_fail_nothing_and_free_the_old_engine(swap_root, log_dir):
    versions = {name: read_manifest(swap_root / name).version for name in ("dpo", "ppo")}
    server = launch_server(swap_root, log_dir, "--policy-backend", "vllm", "--vllm-engine-args",
                           '{"enforce_eager": true}', "--admin-key", KEY, "--policy", f"live={swap_root / 'dpo'}",
                           "--max-in-flight", "16", "--default-max-tokens", "8")
    admin = {"Authorization": f"Bearer {KEY}"}
    figures: list[dict] = []
    try:
        server.wait(timeout_s=300)
        pid = server.process.pid

        async def run() -> list[tuple[int, str]]:
            answers: list[tuple[int, str]] = []

            async def answered_by(version: str, since: int) -> None:
                """Wait until `version` has given CLIENTS of the answers after the first `since`."""
                await wait_until_async(lambda: sum(v == version for _, v in answers[since:]) >= CLIENTS, 120,
                                       f"{CLIENTS} answers from {version}")

            stop = asyncio.Event()
            load = [asyncio.create_task(_steady_load(server.url, stop, answers)) for _ in range(CLIENTS)]
            async with httpx.AsyncClient(base_url=server.url, timeout=300, headers=admin) as client:
                await answered_by(versions["dpo"], 0)  # the serving engine answers before the first swap
                for action, expect in (("ppo", "ppo"), ("rollback", "dpo")):
                    old_engine = engine_processes(pid)
                    assert old_engine, "the serving engine runs in processes of its own"
                    rss_before = tree_rss(pid)
                    with Sampler(lambda: tree_rss(pid), every_s=0.1) as rss:
                        if action == "rollback":
                            response = await client.post("/admin/policies/live/rollback")
                        else:
                            response = await client.post("/admin/policies/live", json={"checkpoint": action})
                        assert response.status_code == 200, response.text
                        assert response.json()["version"] == versions[expect]
                        swapped_at = len(answers)
                        await _exited(old_engine)  # closed after its last request
                    await answered_by(versions[expect], swapped_at)  # the new engine answers after each swap
                    figures.append({"swap": action, "seconds": response.json()["timings"],
                                    "rss_before_mib": rss_before >> 20, "rss_peak_mib": int(rss.peak()) >> 20,
                                    "rss_after_mib": tree_rss(pid) >> 20})
            stop.set()
            await asyncio.gather(*load)
            return answers

        answers = asyncio.run(run())
    finally:
        server.stop()
    print(json.dumps(figures, indent=1))
    failed = [a for a in answers if a[0] != 200]
    assert not failed, failed[:5]
    served = {version for _, version in answers}
    assert served == set(versions.values())
    for swap in figures:
        # Two engines ran side by side during the swap; afterwards the tree holds one again.
        engine_rss = swap["rss_peak_mib"] - swap["rss_before_mib"]
        assert engine_rss > 100, swap
        assert swap["rss_after_mib"] < swap["rss_before_mib"] + engine_rss / 2, swap
