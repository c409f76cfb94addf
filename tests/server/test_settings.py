import argparse
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.cli import add_arguments, settings_from_args
from server.settings import Settings, load_settings


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("BON_"):
            monkeypatch.delenv(key)


def test_defaults_serve_sft_and_rm_under_the_checkpoint_root(monkeypatch, tmp_path):
    monkeypatch.setenv("BON_CHECKPOINTS", str(tmp_path))
    settings = load_settings()
    (spec,) = settings.policy_specs()
    assert (spec.name, spec.backend, spec.path) == ("sft", "hf", tmp_path / "sft")
    assert settings.reward_spec().path == tmp_path / "rm"
    assert settings.missing_checkpoints() == [f"policy sft: {tmp_path / 'sft'}", f"reward model: {tmp_path / 'rm'}"]


def test_a_toml_config_maps_policies_to_checkpoints_and_best_of(tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text('default_best_of = 6\n[policies.sft]\npath = "ck/sft"\nbest_of = 8\n'
                      '[policies.dpo]\npath = "/abs/dpo"\n[reward]\npath = "ck/rm"\n')
    settings = load_settings(config=config)
    policies = settings.resolved_policies()
    assert policies["sft"].path == tmp_path / "ck/sft" and policies["sft"].best_of == 8
    assert policies["dpo"].path == Path("/abs/dpo") and policies["dpo"].best_of == 6
    assert settings.reward_path() == tmp_path / "ck/rm"


def test_flags_beat_environment_which_beats_the_config_file(monkeypatch, tmp_path):
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"max_in_flight": 2, "max_queue": 3, "rm_max_batch": 5,
                                  "reward": {"path": "rm", "backend": "hf"}}))
    monkeypatch.setenv("BON_CONFIG", str(config))
    monkeypatch.setenv("BON_MAX_QUEUE", "30")
    monkeypatch.setenv("BON_RM_MAX_BATCH", "50")
    monkeypatch.setenv("BON_REWARD__BACKEND", "remote")
    settings = settings_from_args(_args("--rm-max-batch", "500", "--reward-url", "http://rm:8000/classify"))
    assert (settings.max_in_flight, settings.max_queue, settings.rm_max_batch) == (2, 30, 500)
    # Nested settings merge field by field: the file's path stays, env and flags add theirs.
    assert settings.reward.path == tmp_path / "rm"
    assert (settings.reward.backend, settings.reward.url) == ("remote", "http://rm:8000/classify")


def test_cli_policies_api_keys_and_openai_replicas():
    settings = settings_from_args(_args(
        "--policy", "sft", "--policy", "dpo=/ck/dpo", "--policy-backend", "openai", "--openai-base-url", "http://a:1",
        "--openai-base-url", "http://b:2/v1", "--api-key", "k1", "--api-key", "k2", "--max-best-of", "4",
        "--default-best-of", "2", "--no-allow-unverified"))
    specs = {s.name: s for s in settings.policy_specs()}
    assert specs["sft"].backend == "openai" and specs["sft"].base_urls == ("http://a:1", "http://b:2/v1")
    assert specs["sft"].remote_model == "sft" and specs["dpo"].path == Path("/ck/dpo")
    assert settings.api_keys == ["k1", "k2"] and settings.max_best_of == 4 and settings.allow_unverified is False


@pytest.mark.parametrize("overrides", [
    {"default_best_of": 64, "max_best_of": 32},
    {"policy_backend": "openai"},  # no base URLs
    {"reward": {"backend": "remote"}},  # no URL
    {"max_in_flight": 0},
])
def test_inconsistent_settings_are_refused(overrides):
    with pytest.raises(ValidationError):
        Settings(**overrides)


def test_only_loopback_listens_without_an_api_key_or_allow_open():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert load_settings(host=host).host == host
    for host in ("0.0.0.0", "::", "10.1.2.3", "bon.example", ""):
        with pytest.raises(ValidationError, match="--allow-open"):
            load_settings(host=host)
        assert load_settings(host=host, api_keys=["sk-k"]).host == host
        assert load_settings(host=host, allow_open=True).host == host


def test_the_admission_budget_defaults_to_the_largest_request_and_must_hold_a_default_one():
    assert Settings().inflight_token_budget() == 32 * 512  # max_best_of × max_tokens
    assert _args("--max-inflight-tokens", "4096").max_inflight_tokens == 4096
    with pytest.raises(ValidationError, match=r"best_of × default_max_tokens \(768\): it could never run"):
        Settings(max_inflight_tokens=700, policies={"sft": {}, "big": {"best_of": 12}})
