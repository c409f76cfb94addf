"""The admin API as an operator meets it: a real server with an admin key, called with httpx and `bon checkpoints`.

Every refusal leaves the old model serving: each broken checkpoint and each path escape is tried against the
live policy (and the reward model) while a client keeps asking it, and every one of those requests succeeds.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.servers import Server
from models.checkpoint import read_manifest
from server.app import create_app
from server.settings import Settings
from server.state import ServerState
from tests.builders import BAD_POLICIES, BAD_REWARDS, LOAD_FAILS, REPO, WEIGHTS, derive, launch_server, perturb

KEY = "admin-test-key"
BODY_LIMIT = 4096
ADMIN = {"Authorization": f"Bearer {KEY}"}
PROMPT = [{"role": "user", "content": "What can I do with my teddy bear today?"}]
ROUTES = [("GET", "/admin/checkpoints"), ("GET", "/admin/models"), ("POST", "/admin/policies/live"),
          ("PATCH", "/admin/policies/live"), ("DELETE", "/admin/policies/live"),
          ("POST", "/admin/policies/live/rollback"), ("POST", "/admin/reward"), ("POST", "/admin/reward/rollback")]


@pytest.fixture(scope="module")
def admin_server(swap_root: Path, log_dir: Path):
    server = launch_server(swap_root, log_dir, "--admin-key", KEY, "--policy", "sft", "--policy",
                           f"live={swap_root / 'dpo'}", "--default-best-of", "2", "--default-max-tokens", "8",
                           "--max-body-bytes", str(BODY_LIMIT))
    try:
        yield server.wait()
    finally:
        server.stop()


def version(root: Path, name: str) -> str:
    return read_manifest(root / name).version


def admin(server: Server, method: str, path: str, body: dict | None = None) -> httpx.Response:
    return httpx.request(method, server.url + path, json=body, headers=ADMIN, timeout=60)


def ask(server: Server, model: str = "live", **extra) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", timeout=60,
                      json={"model": model, "messages": PROMPT, "max_tokens": 6, **extra})


def swaps(server: Server, result: str) -> float:
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    return sum(s.value for s in families["bon_swaps"].samples
               if s.name == "bon_swaps_total" and s.labels["result"] == result)


def test_without_an_admin_key_the_admin_api_does_not_exist(swap_root):
    async def scenario() -> list[httpx.Response]:
        app = create_app(Settings(checkpoints=swap_root))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bon") as client:
            return [await client.request(method, path, headers=ADMIN) for method, path in ROUTES]

    for response in asyncio.run(scenario()):
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_admin_routes_need_the_admin_key(admin_server):
    for method, path in ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            response = httpx.request(method, admin_server.url + path, headers=headers, json={"checkpoint": "dpo"})
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["error"]["code"] == "invalid_admin_key"
            assert response.headers["www-authenticate"] == "Bearer"


def test_checkpoints_are_listed_with_their_manifests(admin_server, swap_root):
    listed = {c["name"]: c for c in admin(admin_server, "GET", "/admin/checkpoints").json()["data"]}
    dpo = listed["dpo"]
    assert (dpo["kind"], dpo["method"], dpo["parent"]) == ("policy", "dpo", version(swap_root, "sft"))
    assert dpo["figures"] == {"gold_reward": 0.4} and dpo["created"] > 0 and dpo["valid"] is None
    assert listed["rm-v2"]["kind"] == "reward" and "escape" not in listed
    verified = {c["name"]: c for c in admin(admin_server, "GET", "/admin/checkpoints?verify=true").json()["data"]}
    assert verified["ppo"]["valid"] is True
    assert verified["bad/flipped-byte"]["valid"] is False and "sha256" in verified["bad/flipped-byte"]["error"]


class Steady:
    """A client asking `model` one request after another in a thread, until stopped."""

    def __init__(self, server: Server, model: str = "live"):
        self.server, self.model = server, model
        self.responses: list[httpx.Response] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.responses.append(ask(self.server, self.model))

    def __enter__(self) -> "Steady":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def test_each_broken_checkpoint_is_refused_while_the_old_model_answers(admin_server, swap_root):
    live, rm = version(swap_root, "dpo"), version(swap_root, "rm")
    failed_before = swaps(admin_server, "failed")
    attempts = [("/admin/policies/live", name, "invalid_checkpoint", reason) for name, reason in BAD_POLICIES.items()]
    attempts += [("/admin/policies/live", LOAD_FAILS, "load_failed", "size mismatch|ignore_mismatched_sizes"),
                 ("/admin/policies/live", "rm", "invalid_checkpoint", "expected a policy"),
                 ("/admin/policies/live", "nowhere", "checkpoint_not_found", "no checkpoint directory"),
                 ("/admin/reward", "dpo", "invalid_checkpoint", "expected a reward")]
    attempts += [("/admin/reward", name, "invalid_checkpoint", reason) for name, reason in BAD_REWARDS.items()]
    with Steady(admin_server) as steady:
        for path, checkpoint, code, reason in attempts:
            response = admin(admin_server, "POST", path, {"checkpoint": checkpoint})
            error = response.json()["error"]
            assert response.status_code in (400, 404) and error["code"] == code, (checkpoint, error)
            assert error["param"] == "checkpoint"
            assert any(part in error["message"] for part in reason.split("|")), (checkpoint, error["message"])
            assert f"still serves {live}" in error["message"] or f"reward model still serves {rm}" in error["message"] \
                or code == "checkpoint_not_found"
            answer = ask(admin_server).json()["bon"]
            assert (answer["policy_version"], answer["reward_model_version"]) == (live, rm)
    assert steady.responses and all(r.status_code == 200 for r in steady.responses)
    assert {r.json()["bon"]["policy_version"] for r in steady.responses} == {live}
    assert swaps(admin_server, "failed") - failed_before == len(attempts) - 1  # a missing directory loads nothing


def test_admin_bodies_are_bounded_and_keys_compared_as_bytes(admin_server, swap_root):
    big = json.dumps({"checkpoint": "ppo", "best_of": 2, "pad": "x" * BODY_LIMIT}).encode()
    for method, path in (("POST", "/admin/policies/live"), ("PATCH", "/admin/policies/live"),
                         ("POST", "/admin/reward")):
        for body in (big, iter([big[:1000], big[1000:]])):  # declared, then chunked (counted while read)
            response = httpx.request(method, admin_server.url + path, content=body, headers=ADMIN)
            assert response.status_code == 413, (method, path, response.text)
            assert response.json() == {"error": {"message": f"the request body exceeds {BODY_LIMIT} bytes",
                                                 "type": "invalid_request_error", "param": None,
                                                 "code": "body_too_large"}}
    for token in ("Bearer ключ".encode(), f"Bearer {KEY}é".encode("latin-1")):
        response = httpx.get(admin_server.url + "/admin/models", headers={"Authorization": token})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_admin_key"
    assert ask(admin_server).json()["bon"]["policy_version"] == version(swap_root, "dpo")


def test_openapi_describes_every_admin_response(admin_server):
    spec = httpx.get(admin_server.url + "/openapi.json").json()
    responses = ["CheckpointList", "ModelsStatus", "PolicySwap", "BestOf", "Unload", "PolicySwap", "Swap", "Swap"]
    for (method, path), model in zip(ROUTES, responses, strict=True):
        operation = spec["paths"][path.replace("/live", "/{name}")][method.lower()]
        content = operation["responses"]["200"]["content"]["application/json"]
        assert content["schema"] == {"$ref": f"#/components/schemas/{model}"}, (method, path)
    schemas = spec["components"]["schemas"]
    assert list(schemas["SwapTimings"]["properties"]) == [
        "validate_seconds", "load_seconds", "warmup_seconds", "total_seconds"]
    assert "default_best_of" in schemas["PolicySwap"]["properties"]
    assert "default_best_of" not in schemas["Swap"]["properties"]


def test_a_server_bug_during_a_load_is_a_500_and_the_old_model_serves_on(swap_root, monkeypatch, caplog):
    """A bug is not the checkpoint's fault: no 400 `load_failed`, but a 500 logged with its traceback; the swap
    is counted as failed and the next load works."""
    import server.admin

    def buggy_warm_up(name, backend, scorer):
        raise AttributeError("'NoneType' object has no attribute 'generate'")

    async def scenario() -> None:
        app = create_app(Settings(checkpoints=swap_root, admin_key=KEY, default_best_of=2, default_max_tokens=6))
        state = app.state.bon
        await state.start()
        sft = state.served.policies["sft"].version
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://bon", timeout=60) as client:
                with monkeypatch.context() as patched:
                    patched.setattr(server.admin, "warm_up_policy", buggy_warm_up)
                    response = await client.post("/admin/policies/sft", headers=ADMIN, json={"checkpoint": "dpo"})
                assert response.status_code == 500
                assert response.json()["error"] == {"message": "internal server error", "type": "internal_error",
                                                     "param": None, "code": "internal_error"}
                served = await client.post("/v1/chat/completions", json={"model": "sft", "messages": PROMPT})
                assert served.status_code == 200 and served.json()["bon"]["policy_version"] == sft
                status = (await client.get("/admin/models", headers=ADMIN)).json()
                assert [h["version"] for h in status["policies"]["sft"]["history"]] == [sft]
                failed = state.metrics.registry.get_sample_value("bon_swaps_total",
                                                                 {"target": "policy", "result": "failed"})
                assert failed == 1
                swap = (await client.post("/admin/policies/sft", headers=ADMIN, json={"checkpoint": "dpo"})).json()
                assert (swap["previous_version"], swap["version"]) == (sft, version(swap_root, "dpo"))
        finally:
            await state.stop()

    asyncio.run(scenario())
    (logged,) = [r for r in caplog.records if r.exc_info and r.exc_info[0] is AttributeError]
    assert "POST /admin/policies/sft" in logged.getMessage()


def test_paths_outside_the_root_are_refused(admin_server, tiny_checkpoints):
    escapes = ["../sft", "dpo/../../sft", str(tiny_checkpoints / "sft"), "escape", "http://example.com/dpo",
               "bad/linked-file"]
    for path in ("/admin/policies/live", "/admin/reward"):
        for checkpoint in escapes:
            response = admin(admin_server, "POST", path, {"checkpoint": checkpoint})
            assert response.status_code == 400, (path, checkpoint, response.text)
            assert response.json()["error"]["code"] == "checkpoint_outside_root"
    assert ask(admin_server).status_code == 200


def test_best_of_unload_and_rollback(admin_server, swap_root):
    dpo, ppo = version(swap_root, "dpo"), version(swap_root, "ppo")
    assert admin(admin_server, "PATCH", "/admin/policies/live", {"best_of": 3}).json()["default_best_of"] == 3
    assert ask(admin_server).json()["bon"]["best_of"] == 3
    assert admin(admin_server, "PATCH", "/admin/policies/live", {"best_of": 999}).status_code == 400
    assert admin(admin_server, "PATCH", "/admin/policies/nope", {"best_of": 2}).json()["error"]["code"] == \
        "model_not_found"

    swap = admin(admin_server, "POST", "/admin/policies/live", {"checkpoint": "ppo"}).json()
    assert (swap["previous_version"], swap["version"], swap["default_best_of"]) == (dpo, ppo, 3)
    assert ask(admin_server).json()["bon"]["policy_version"] == ppo
    back = admin(admin_server, "POST", "/admin/policies/live/rollback").json()
    assert (back["previous_version"], back["version"]) == (ppo, dpo)
    assert ask(admin_server).json()["bon"]["policy_version"] == dpo
    again = admin(admin_server, "POST", "/admin/policies/live/rollback")
    assert again.status_code == 409 and again.json()["error"]["code"] == "no_previous_version"

    assert admin(admin_server, "DELETE", "/admin/policies/live").json()["version"] == dpo
    models = httpx.get(admin_server.url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["sft"]
    assert ask(admin_server).json()["error"]["code"] == "model_not_found"
    last = admin(admin_server, "DELETE", "/admin/policies/sft")
    assert last.status_code == 409 and last.json()["error"]["code"] == "last_policy"
    assert admin(admin_server, "POST", "/admin/policies/live/rollback").json()["version"] == dpo  # undoes the unload
    cards = {m["id"]: m["bon"] for m in httpx.get(admin_server.url + "/v1/models").json()["data"]}
    assert cards["live"] == {"version": dpo, "backend": "hf", "default_best_of": 3}
    admin(admin_server, "PATCH", "/admin/policies/live", {"best_of": 2})

    rm, rm2 = version(swap_root, "rm"), version(swap_root, "rm-v2")
    assert admin(admin_server, "POST", "/admin/reward", {"checkpoint": "rm-v2"}).json()["version"] == rm2
    assert ask(admin_server).json()["bon"]["reward_model_version"] == rm2
    assert admin(admin_server, "POST", "/admin/reward/rollback").json()["version"] == rm
    assert admin(admin_server, "POST", "/admin/reward/rollback").json()["error"]["code"] == "no_previous_version"
    status = admin(admin_server, "GET", "/admin/models").json()
    assert status["policies"]["live"]["version"] == dpo and status["reward"]["version"] == rm
    assert admin(admin_server, "POST", "/admin/policies/no%20spaces", {"checkpoint": "dpo"}).status_code == 400


def _bon(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bon.cli", "checkpoints", *args], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_bon_checkpoints_drives_a_running_server(admin_server, swap_root):
    listing = _bon("list", "--url", admin_server.url, "--json", BON_ADMIN_KEY=KEY)
    refused = _bon("load", "live", "../sft", "--url", admin_server.url, "--admin-key", KEY)
    out, err = listing.communicate(timeout=120)
    assert listing.returncode == 0, err
    assert {"dpo", "ppo", "rm-v2"} <= {c["name"] for c in json.loads(out)["data"]}
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 1 and "checkpoint_outside_root" in err and "'..'" in err

    started = time.monotonic()
    load = _bon("load", "live", "ppo", "--best-of", "2", "--url", admin_server.url, "--admin-key", KEY)
    out, err = load.communicate(timeout=120)
    assert load.returncode == 0, err
    assert f"live: {version(swap_root, 'dpo')} -> {version(swap_root, 'ppo')}" in out
    assert ask(admin_server).json()["bon"]["policy_version"] == version(swap_root, "ppo")
    assert time.monotonic() - started < 60
    assert admin(admin_server, "POST", "/admin/policies/live/rollback").status_code == 200


@asynccontextmanager
async def _app_in_this_process(checkpoints: Path) -> AsyncIterator[tuple[ServerState, httpx.AsyncClient]]:
    """The admin-enabled app in this process (so a test can patch its loader), started, and a client on it."""
    app = create_app(Settings(checkpoints=checkpoints, admin_key=KEY, default_best_of=2, default_max_tokens=6))
    state = app.state.bon
    await state.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bon",
                                     timeout=60) as client:
            yield state, client
    finally:
        await state.stop()


def test_a_second_change_while_one_runs_is_refused_and_serving_goes_on(swap_root, monkeypatch):
    import server.admin

    real_load = server.admin.load_policy
    loading, release = threading.Event(), threading.Event()

    def held_load(spec):
        loading.set()
        release.wait(60)
        return real_load(spec)

    monkeypatch.setattr(server.admin, "load_policy", held_load)

    async def scenario() -> None:
        async with _app_in_this_process(swap_root) as (_, client):
            try:
                first = asyncio.create_task(client.post("/admin/policies/dpo", headers=ADMIN,
                                                        json={"checkpoint": "dpo"}))
                assert await asyncio.to_thread(loading.wait, 30), "the first load never started"
                second = await client.post("/admin/policies/ppo", headers=ADMIN, json={"checkpoint": "ppo"})
                assert second.status_code == 409 and second.json()["error"]["code"] == "swap_in_progress"
                assert second.headers["retry-after"] == "1"
                assert (await client.get("/admin/models", headers=ADMIN)).status_code == 200
                served = await client.post("/v1/chat/completions", json={"model": "sft", "messages": PROMPT})
                assert served.status_code == 200 and not first.done()  # requests go on during the load
                release.set()
                assert (await first).json()["version"] == version(swap_root, "dpo")
            finally:
                release.set()

    asyncio.run(scenario())


def test_with_the_admin_api_on_vllm_engines_leave_room_for_a_swap():
    two = {"a": {"path": "/a"}, "b": {"path": "/b"}}
    assert Settings(policy_backend="vllm", policies=two, admin_key=KEY).policy_options("vllm")["engines"] == 3
    assert "engines" not in Settings(policy_backend="vllm", policies=two).policy_options("vllm")


def test_a_checkpoint_rewritten_between_its_checks_and_its_load_is_refused(tiny_checkpoints, tmp_path, monkeypatch):
    """The registry's checks (tokenizer fit, architecture, no remote code) ran on the checkpoint as it was; a
    trainer that rewrites it before the load would get unchecked weights served: the load is refused."""
    import server.admin

    for name in ("sft", "rm"):
        shutil.copytree(tiny_checkpoints / name, tmp_path / name)
    derive(tmp_path / "sft", tmp_path / "dpo", "dpo", lambda tmp: perturb(tmp / WEIGHTS, 1))
    derive(tmp_path / "sft", tmp_path / "newer", "dpo", lambda tmp: perturb(tmp / WEIGHTS, 2))
    checked = version(tmp_path, "dpo")
    real_load = server.admin.load_policy

    def trainer_writes_before_the_load(spec):
        shutil.rmtree(tmp_path / "dpo")
        shutil.copytree(tmp_path / "newer", tmp_path / "dpo")
        monkeypatch.setattr(server.admin, "load_policy", real_load)
        return real_load(spec)

    monkeypatch.setattr(server.admin, "load_policy", trainer_writes_before_the_load)

    async def scenario() -> None:
        async with _app_in_this_process(tmp_path) as (state, client):
            refused = await client.post("/admin/policies/live", headers=ADMIN, json={"checkpoint": "dpo"})
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_checkpoint"
            assert f"{checked} was checked, {version(tmp_path, 'newer')} was loaded" in refused.text
            assert "live" not in state.served.policies
            swap = await client.post("/admin/policies/live", headers=ADMIN, json={"checkpoint": "dpo"})
            assert swap.json()["version"] == version(tmp_path, "newer")  # checked and loaded alike this time

    asyncio.run(scenario())
