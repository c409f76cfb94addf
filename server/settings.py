"""Server settings: one pydantic-settings object read from `BON_*` variables, a config file and CLI flags.

Precedence, highest first: CLI flags, environment (`BON_MAX_IN_FLIGHT=4`; nested with `__`, e.g.
`BON_REWARD__PATH`; lists and dicts as JSON), the config file (`--config` or `BON_CONFIG`, JSON or TOML, keys
as the fields below), then the defaults. Paths in a config file are relative to the file. With no policy named
anywhere, the server serves `<checkpoints>/sft` as policy `sft` and `<checkpoints>/rm` as the reward model.

Example config file (TOML):

    default_best_of = 8
    [policies.sft]
    path = "checkpoints/sft"
    best_of = 8
    [policies.dpo]
    path = "checkpoints/dpo"
    best_of = 4
    [reward]
    path = "checkpoints/rm"
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.interface import PolicySpec, RewardSpec

PolicyBackendName = Literal["hf", "vllm", "openai"]


class ConfigError(ValueError):
    """Settings that cannot be served: invalid values, or checkpoints that are not there. The command-line entry
    points turn it into their exit message."""


class PolicyConfig(BaseModel):
    """One served policy, named by the request's `model` field."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = None
    """Checkpoint directory (hf and vllm backends)."""
    best_of: int | None = Field(default=None, ge=1)
    """Candidates sampled when a request does not say; `default_best_of` if unset."""
    backend: PolicyBackendName | None = None
    """Overrides `policy_backend` for this policy."""
    base_urls: list[str] = []
    """Replicas of an OpenAI-compatible server (openai backend); `openai_base_urls` if empty."""
    remote_model: str | None = None
    """The model name on the remote server (openai backend); the policy's name if unset."""


class RewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["hf", "remote"] = "hf"
    path: Path | None = None
    """Checkpoint directory of a sequence-classification RM (hf backend); `<checkpoints>/rm` if unset."""
    url: str | None = None
    """Full URL of a vLLM-compatible `/classify` or `/pooling` endpoint (remote backend)."""
    model: str | None = None
    """Model name sent to the remote reward server."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BON_", env_nested_delimiter="__", extra="ignore")

    host: str = Field("127.0.0.1", description="interface to listen on; any but loopback needs an API key or "
                      "--allow-open")
    port: int = Field(8000, description="port to listen on")
    config: Path | None = Field(None, description="config file (JSON or TOML) naming policies and the reward model")
    checkpoints: Path = Field(Path("checkpoints"), description="root of the default checkpoints")
    policies: dict[str, PolicyConfig] = Field({}, description="served policies by name")
    reward: RewardConfig = Field(RewardConfig(), description="the reward model")
    guard: Literal["judge", "hf", "remote"] | None = Field(
        None, description="held-out reward that scores each chosen answer, to watch overoptimisation: judge "
        "(the embedded world's gold judge), hf (--guard-path) or remote (--guard-url); off if unset")
    guard_path: Path | None = Field(None, description="checkpoint of the hf guard (a second reward model)")
    guard_url: str | None = Field(None, description="/classify or /pooling URL of the remote guard")
    guard_model: str | None = Field(None, description="model name sent to the remote guard")
    policy_backend: PolicyBackendName = Field("hf", description="backend of policies that do not name one")
    device: str = Field("cpu", description="torch device of the hf backends: cpu, cuda, cuda:1 or auto")
    allow_unverified: bool = Field(False, description="serve Hugging Face checkpoints that have no manifest")
    default_best_of: int = Field(8, ge=1, description="candidates per request for policies without their own")
    openai_base_urls: list[str] = Field([], description="replicas for openai-backend policies")
    openai_balance: Literal["round_robin", "least_outstanding"] = Field(
        "round_robin", description="how a replica is chosen")
    openai_tokenizer: Path | None = Field(
        None, description="the remote policy's tokenizer, to count prompt tokens here (optional)")
    upstream_timeout_s: float = Field(120.0, gt=0, description="deadline of one call to a remote server, its "
                                      "retries and Retry-After waits included")
    upstream_retries: int = Field(2, ge=0, description="retries of a failed call to a remote server")
    upstream_max_bytes: int = Field(16 << 20, ge=1, description="largest answer read from a remote server; a longer "
                                    "one is that server's failure")
    upstream_eject_s: float = Field(1.0, ge=0, description="how long a policy replica that failed is set aside, "
                                    "doubled at each failure in a row up to 8 times as long (0: never)")
    upstream_api_key: str | None = Field(None, description="bearer key sent to remote servers")
    vllm_engine_args: dict[str, Any] = Field({}, description="extra vLLM AsyncEngineArgs (JSON)")
    api_keys: list[str] = Field([], description="accepted bearer keys; empty means no authentication")
    admin_key: str | None = Field(None, description="bearer key of the /admin API (hot swap); unset turns it off")
    allow_open: bool = Field(False, description="listen on a non-loopback --host without API keys: anyone who can "
                             "reach the port may use the models")
    max_best_of: int = Field(32, ge=1, description="largest best_of a request may ask for")
    max_n: int = Field(8, ge=1, description="largest n (choices returned) a request may ask for")
    max_tokens: int = Field(512, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(64, ge=1, description="max_tokens of a request that sets none")
    max_prompt_tokens: int = Field(1024, ge=1, description="longest prompt, in the policy's tokens")
    max_body_bytes: int = Field(1 << 20, ge=1, description="largest request body, checked before parsing")
    body_read_timeout_s: float = Field(30.0, gt=0, description="longest a request's body may take to arrive, from "
                                       "its headers on; a slower one is answered 408 (uvicorn sets no limit)")
    max_in_flight: int = Field(8, ge=1, description="requests sampled or scored at once")
    max_queue: int = Field(64, ge=0, description="requests waiting for a slot; more are answered 429")
    retry_after_s: int = Field(1, ge=0, description="Retry-After of a 429")
    max_inflight_tokens: int | None = Field(
        None, ge=1, description="admission budget, in completion tokens: a request holds the most it may generate, "
        "best_of × max_tokens (1 × max_tokens at temperature 0), while it runs; one that does not fit beside those in "
        "flight waits in the queue, one larger than the whole budget is refused (400); prompt tokens are not counted. "
        "Unset: max_best_of × max_tokens, the largest request alone")
    request_timeout_s: float = Field(600.0, gt=0, description="longest a completion may take from its arrival, "
                                     "queueing included (a client's shorter timeout, as the openai clients send it in "
                                     "X-Stainless-Read-Timeout, wins); past it the work stops and the answer is 408")
    shutdown_grace_s: float = Field(25.0, ge=0, description="on SIGTERM, how long the requests in flight and queued "
                                    "may take to finish while new ones are answered 503, before the server exits")
    limit_concurrency: int | None = Field(None, ge=1, description="open connections uvicorn keeps before it answers "
                                          "503 to new requests; unset: max_in_flight + max_queue + 64")
    timeout_keep_alive_s: int = Field(5, ge=1, description="seconds an idle keep-alive connection stays open")
    rm_max_batch: int = Field(64, ge=1, description="most candidates in one reward-model forward pass")
    rm_max_wait_ms: float = Field(5.0, ge=0, description="longest wait for more candidates to fill an RM batch")
    log_level: str = Field("info", description="uvicorn and server log level")
    access_log: bool = Field(True, description="one log line per request: id, method, path, status, policy, "
                             "best_of, latency")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_best_of > self.max_best_of:
            raise ValueError("default_best_of cannot exceed max_best_of")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError("default_max_tokens cannot exceed max_tokens")
        default_cost = max(p.best_of or 0 for p in self.resolved_policies().values()) * self.default_max_tokens
        if default_cost > self.inflight_token_budget():
            raise ValueError(f"max_inflight_tokens ({self.max_inflight_tokens}) is below a default request's cost, "
                             f"best_of × default_max_tokens ({default_cost}): it could never run")
        for name, policy in self.resolved_policies().items():
            if policy.backend == "openai" and not policy.base_urls:
                raise ValueError(f"policy {name}: the openai backend needs base URLs (--openai-base-url)")
            if policy.best_of is not None and policy.best_of > self.max_best_of:
                raise ValueError(f"policy {name}: best_of {policy.best_of} exceeds max_best_of")
        if self.reward.backend == "remote" and not self.reward.url:
            raise ValueError("the remote reward backend needs a URL (--reward-url)")
        if self.guard == "hf" and self.guard_path is None:
            raise ValueError("the hf guard needs a checkpoint (--guard-path)")
        if self.guard == "remote" and not self.guard_url:
            raise ValueError("the remote guard needs a URL (--guard-url)")
        if not is_loopback(self.host) and not self.api_keys and not self.allow_open:
            raise ValueError(f"--host {self.host} opens the API to the network, and no API key is set: set one "
                             "(--api-key KEY, or BON_API_KEYS='[\"KEY\"]'), or pass --allow-open (BON_ALLOW_OPEN=1) "
                             "to serve it to anyone who can reach the port")
        return self

    def inflight_token_budget(self) -> int:
        """`max_inflight_tokens`, or its default when unset."""
        return self.max_inflight_tokens or self.max_best_of * self.max_tokens

    def resolved_policies(self) -> dict[str, PolicyConfig]:
        """The policies to serve with every default filled in."""
        policies = self.policies or {"sft": PolicyConfig()}
        out = {}
        for name, p in policies.items():
            backend = p.backend or self.policy_backend
            path = p.path if p.path is not None or backend == "openai" else self.checkpoints / name
            out[name] = PolicyConfig(path=path, best_of=p.best_of or self.default_best_of, backend=backend,
                                     base_urls=p.base_urls or self.openai_base_urls,
                                     remote_model=p.remote_model or name)
        return out

    def reward_path(self) -> Path:
        return self.reward.path if self.reward.path is not None else self.checkpoints / "rm"

    def policy_options(self, backend: PolicyBackendName) -> dict[str, Any]:
        """The backend-specific options of a policy spec (hot swap builds its specs with these too)."""
        if backend == "openai":
            return {"balance": self.openai_balance, "timeout_s": self.upstream_timeout_s,
                    "retries": self.upstream_retries, "api_key": self.upstream_api_key,
                    "max_bytes": self.upstream_max_bytes, "tokenizer": self.openai_tokenizer,
                    "eject_s": self.upstream_eject_s}
        options: dict[str, Any] = {"allow_unverified": self.allow_unverified, "device": self.device}
        if backend == "vllm":
            options["engine_args"] = self.vllm_engine_args
            if self.admin_key:  # a hot swap starts one more engine beside those serving
                serving = sum(p.backend == "vllm" for p in self.resolved_policies().values())
                options["engines"] = serving + 1
        return options

    def policy_specs(self) -> list[PolicySpec]:
        specs = []
        for name, p in self.resolved_policies().items():
            backend = p.backend or "hf"
            specs.append(PolicySpec(name=name, backend=backend, path=p.path, base_urls=tuple(p.base_urls),
                                    remote_model=p.remote_model, options=self.policy_options(backend)))
        return specs

    def reward_spec(self) -> RewardSpec:
        if self.reward.backend == "remote":
            return self._remote_reward_spec(self.reward.url, self.reward.model)
        return self._hf_reward_spec(self.reward_path())

    def guard_spec(self) -> RewardSpec:
        """How to build the guard: the gold judge, or a second RM (hf or remote)."""
        if self.guard == "judge":
            return RewardSpec(backend="judge")
        if self.guard == "remote":
            return self._remote_reward_spec(self.guard_url, self.guard_model)
        return self._hf_reward_spec(self.guard_path)

    def _remote_reward_spec(self, url: str | None, model: str | None) -> RewardSpec:
        return RewardSpec(backend="remote", url=url, remote_model=model,
                          options={"timeout_s": self.upstream_timeout_s, "retries": self.upstream_retries,
                                   "api_key": self.upstream_api_key, "max_bytes": self.upstream_max_bytes})

    def _hf_reward_spec(self, path: Path | None) -> RewardSpec:
        return RewardSpec(backend="hf", path=path,
                          options={"allow_unverified": self.allow_unverified, "device": self.device})

    def missing_checkpoints(self) -> list[str]:
        """Checkpoint directories the settings name that do not exist, as `what: path` lines."""
        missing = [f"policy {name}: {p.path}" for name, p in self.resolved_policies().items()
                   if p.backend != "openai" and p.path is not None and not p.path.is_dir()]
        if self.reward.backend == "hf" and not self.reward_path().is_dir():
            missing.append(f"reward model: {self.reward_path()}")
        if self.guard == "hf" and self.guard_path is not None and not self.guard_path.is_dir():
            missing.append(f"guard: {self.guard_path}")
        return missing


def is_loopback(host: str) -> bool:
    """Whether listening on `host` serves this machine only (`localhost`, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" (every interface)
        return False


def read_config_file(path: Path) -> dict[str, Any]:
    """A JSON or TOML config file, with its relative checkpoint paths made relative to the file."""
    path = Path(path)
    text = path.read_text()
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file holds an object of settings")
    base = path.parent

    def anchor(value: Any) -> Any:
        return str(base / value) if isinstance(value, str) and not Path(value).is_absolute() else value

    for policy in (data.get("policies") or {}).values():
        if isinstance(policy, dict) and "path" in policy:
            policy["path"] = anchor(policy["path"])
    for key in ("checkpoints", "openai_tokenizer", "guard_path"):
        if key in data:
            data[key] = anchor(data[key])
    if isinstance(data.get("reward"), dict) and "path" in data["reward"]:
        data["reward"]["path"] = anchor(data["reward"]["path"])
    return data


def _deep_merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    out = dict(low)
    for key, value in high.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def load_settings(**overrides: Any) -> Settings:
    """Settings from flags (`overrides`), then the environment, then the config file they name, then defaults."""
    explicit = Settings(**overrides)
    if explicit.config is None:
        return explicit
    merged = _deep_merge(read_config_file(explicit.config), explicit.model_dump(exclude_unset=True))
    return Settings(**merged)
