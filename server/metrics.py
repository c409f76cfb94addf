"""Prometheus metrics, `bon_` prefix and units in the names, on a registry of the app's own.

A per-app `CollectorRegistry` (not the process-global one) lets tests and embedders build several apps in one
process. Per-request metrics carry the checkpoint versions that served the request (`version` for the policy,
`reward_version` for the RM), so a hot swap shows up as a new series, never blended into the old one. An
in-process vLLM engine records its own `vllm:*` metrics in the process-global registry; `/metrics` appends
those, so one scrape shows the server and its engine.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Metric, generate_latest

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_REWARD = (-10.0, -5.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
_GAIN = (0.0, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _EngineMetrics:
    """The `vllm:*` families of the process-global registry (a collector view for `generate_latest`)."""

    def collect(self) -> Iterator[Metric]:
        return (family for family in REGISTRY.collect() if family.name.startswith("vllm:"))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram("bon_request_duration_seconds", "End-to-end latency of a Best-of-N request",
                                          ["policy", "version", "best_of"], buckets=_LATENCY, registry=r)
        self.queue_wait = Histogram("bon_queue_wait_seconds", "Time a request waited for an admission slot",
                                    buckets=_LATENCY, registry=r)
        self.sample_duration = Histogram("bon_sample_duration_seconds", "Time to sample all candidates of a request",
                                         ["policy", "version"], buckets=_LATENCY, registry=r)
        self.score_duration = Histogram("bon_score_duration_seconds",
                                        "Time from submitting a request's candidates to the RM until scored",
                                        ["reward_version"], buckets=_LATENCY, registry=r)
        self.in_flight = Gauge("bon_requests_in_flight", "Requests holding an admission slot", registry=r)
        self.queued = Gauge("bon_requests_queued", "Requests waiting for an admission slot", registry=r)
        self.inflight_tokens = Gauge("bon_inflight_tokens", "Admission budget held by the requests in flight: the "
                                     "most tokens each may generate (best_of × max_tokens)", registry=r)
        self.inflight_budget = Gauge("bon_inflight_budget_tokens", "The admission budget (--max-inflight-tokens)",
                                     registry=r)
        self.requests = Counter("bon_requests_total", "Best-of-N requests answered",
                                ["policy", "version", "reward_version", "endpoint"], registry=r)
        self.cancelled = Counter("bon_requests_cancelled_total", "Requests whose client went away before the answer",
                                 registry=r)
        self.cancelled_tokens = Counter("bon_cancelled_tokens_total", "Tokens generated for requests stopped before "
                                        "their answer: the client went away (client_closed) or the deadline passed "
                                        "(timeout)", ["reason"], registry=r)
        self.candidates = Counter("bon_candidates_generated_total", "Candidates sampled", ["policy", "version"],
                                  registry=r)
        self.tokens = Counter("bon_tokens_generated_total", "Completion tokens generated over all candidates",
                              ["policy", "version"], registry=r)
        self.prompt_tokens = Counter("bon_prompt_tokens_total", "Prompt tokens of answered requests",
                                     ["policy", "version"], registry=r)
        self.rm_batch_size = Histogram("bon_rm_batch_size", "Candidates per reward-model forward pass",
                                       ["reward_version"], buckets=_BATCH, registry=r)
        self.rm_worker_restarts = Counter("bon_rm_worker_restarts_total", "Restarts of the reward model's "
                                          "micro-batcher after its worker died", registry=r)
        self.rm_batch_duration = Histogram("bon_rm_batch_duration_seconds", "Duration of one reward-model forward",
                                           ["reward_version"], buckets=_LATENCY, registry=r)
        self.selected_reward = Histogram("bon_selected_reward", "Reward of the first returned choice",
                                         ["policy", "version", "reward_version"], buckets=_REWARD, registry=r)
        self.reward_gain = Histogram("bon_reward_gain", "Reward of the first returned choice minus the candidates' "
                                     "mean", ["policy", "version", "reward_version"], buckets=_GAIN,
                                     registry=r)
        self.rejections = Counter("bon_rejections_total", "Requests refused, by reason", ["reason"], registry=r)
        # Every answer by route and status, so error rates and 429s have a denominator: `handler` is the route's
        # path template (`/admin/policies/{name}`), never the raw path, which a client could vary without end.
        self.responses = Counter("bon_http_responses_total", "HTTP responses by route template and status code",
                                 ["handler", "status"], registry=r)
        # The guard (--guard): a held-out reward of the first returned choice, and the selecting RM's reward
        # minus it. Raw scores on their own scales: watch the gap grow with best_of or over time.
        guarded = ["policy", "version", "reward_version", "best_of"]
        self.guard_reward = Histogram("bon_guard_reward", "Guard's reward of the first returned choice",
                                      guarded, buckets=_REWARD, registry=r)
        self.guard_gap = Histogram("bon_guard_gap", "Selecting RM's reward minus the guard's, of the first "
                                   "returned choice", guarded, buckets=_REWARD, registry=r)
        self.guard_duration = Histogram("bon_guard_duration_seconds", "Time the guard took to score a chosen "
                                        "answer", buckets=_LATENCY, registry=r)
        self.loaded = Gauge("bon_loaded_model_info", "1 for each model served now, with its checkpoint version",
                            ["kind", "name", "version"], registry=r)
        self.swaps = Counter("bon_swaps_total", "Admin loads and rollbacks of a policy or the reward model, by result",
                             ["target", "result"], registry=r)
        self.swap_duration = Histogram("bon_swap_duration_seconds", "Validate, load, warm up and switch one model",
                                       ["target"], buckets=_LATENCY, registry=r)
        self.backend_running = Gauge("bon_policy_requests_running", "Requests inside a policy backend now (vLLM: "
                                     "the engine's unfinished requests, one per sampled candidate)",
                                     ["policy", "version"], registry=r)
        self.draining = Gauge("bon_models_draining", "Swapped-out models still finishing their requests", registry=r)

    def observe_batch(self, size: int, seconds: float, reward_version: str) -> None:
        self.rm_batch_size.labels(reward_version=reward_version).observe(size)
        self.rm_batch_duration.labels(reward_version=reward_version).observe(seconds)

    def publish_loaded(self, policies: dict[str, str], reward_version: str) -> None:
        self.loaded.clear()
        for name, version in policies.items():
            self.loaded.labels(kind="policy", name=name, version=version).set(1)
        self.loaded.labels(kind="reward", name="reward", version=reward_version).set(1)

    def publish_running(self, running: dict[tuple[str, str], int]) -> None:
        """Requests inside each served policy's backend, by (policy, version), read at scrape time."""
        self.backend_running.clear()
        for (policy, version), count in running.items():
            self.backend_running.labels(policy=policy, version=version).set(count)

    def render(self) -> bytes:
        text = generate_latest(self.registry)
        if "vllm" in sys.modules:
            text += generate_latest(_EngineMetrics())  # type: ignore[arg-type]
        return text
