"""deploy/grafana and deploy/prometheus against a real server: every metric and label that a dashboard panel or
an alert rule names is one that `/metrics` exports.

A server with the guard, the admin API and one admission slot answers completions at two best_of, a refusal, a
429 and a reward-model swap, so every family the dashboard reads has series. Each PromQL expression is parsed
(promql-parser) and its labels followed from the selectors up: a selector's metric must be exported with every
label it matches on, an aggregation's `by`, a match's `on`/`group_left` labels must exist beneath it, two
vectors matched one-to-one must carry the same labels (or the result is empty), and a legend or an alert's
annotation may only name labels that the expression's result carries. Labels that Prometheus adds to every
target come from the scrape config's relabelling.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from promql_parser import (
    AggModifierType,
    AggregateExpr,
    BinaryExpr,
    Call,
    LabelModifierType,
    MatrixSelector,
    NumberLiteral,
    ParenExpr,
    StringLiteral,
    SubqueryExpr,
    UnaryExpr,
    ValueType,
    VectorMatchCardinality,
    VectorSelector,
    parse,
    parse_duration,
)

from common.servers import Server
from tests.builders import REPO, launch_server, wait_until

DASHBOARD = REPO / "deploy" / "grafana" / "bon.json"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = REPO / "deploy" / "prometheus" / "bon-alerts.yml"
ADMIN_KEY = "monitoring-admin-key"
CHAT = "/v1/chat/completions"
PROMPT = [{"role": "user", "content": "What can I do with my teddy bear today?"}]
GRAFANA_INTERVALS = ("__rate_interval", "__interval", "__range")
"""Grafana's own range variables, replaced by a duration before parsing."""


# What the server exports.

@pytest.fixture(scope="module")
def observed(tiny_checkpoints: Path, log_dir: Path) -> Iterator[Server]:
    server = launch_server(tiny_checkpoints, log_dir, "--guard", "judge", "--admin-key", ADMIN_KEY,
                           "--max-in-flight", "1", "--max-queue", "0", "--default-max-tokens", "8",
                           "--max-best-of", "32")
    try:
        yield server.wait()
    finally:
        server.stop()


def _in_flight(server: Server) -> float:
    lines = httpx.get(server.url + "/metrics").text.splitlines()
    return next(float(line.split()[-1]) for line in lines if line.startswith("bon_requests_in_flight "))


def _exercise(server: Server) -> None:
    """Series in every family the dashboard reads: answers at two best_of and both endpoints, a 400, a 429
    behind a request that holds the one slot, and a reward-model swap."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for best_of in (1, 2):
            assert client.post(CHAT, json={"model": "sft", "messages": PROMPT, "best_of": best_of}).status_code == 200
        assert client.post("/v1/completions", json={"model": "sft", "prompt": "Hello", "best_of": 2}).status_code == 200
        assert client.post(CHAT, json={"model": "sft", "messages": PROMPT, "best_of": 0}).status_code == 400
        long = {"model": "sft", "messages": PROMPT, "best_of": 32, "max_tokens": 200, "temperature": 2.0}
        held: list[int] = []
        holder = threading.Thread(target=lambda: held.append(httpx.post(server.url + CHAT, json=long,
                                                                         timeout=120).status_code))
        holder.start()
        wait_until(lambda: _in_flight(server) == 1, 60, "the long request to take the one slot")
        assert client.post(CHAT, json={"model": "sft", "messages": PROMPT}).status_code == 429
        holder.join()
        assert held == [200]
        swap = client.post("/admin/reward", json={"checkpoint": "rm"},
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert swap.status_code == 200, swap.text


@pytest.fixture(scope="module")
def exported(observed: Server) -> dict[str, frozenset[str]]:
    """Sample name (`bon_x_bucket`, `bon_y_total`, ...) -> the label names its series carry."""
    _exercise(observed)
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(httpx.get(observed.url + "/metrics").text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(names) for name, names in labels.items()}


def target_labels() -> frozenset[str]:
    """What Prometheus adds to every series it scrapes: `job`, `instance` and the scrape config's targets."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    added = {rule["target_label"] for job in config["scrape_configs"] for rule in job.get("relabel_configs", ())
             if rule.get("action", "replace") == "replace" and "target_label" in rule}
    return frozenset({"job", "instance"} | added)


# Following labels through an expression.

def _is_scalar(node: object) -> bool:
    if isinstance(node, NumberLiteral):
        return True
    if isinstance(node, ParenExpr | UnaryExpr):
        return _is_scalar(node.expr)
    if isinstance(node, Call):
        return node.func.return_type == ValueType.Scalar
    return isinstance(node, BinaryExpr) and _is_scalar(node.lhs) and _is_scalar(node.rhs)


class Labels:
    """The labels an expression's result series carry, with a problem noted wherever the expression names a
    metric or a label that the exported series cannot have."""

    def __init__(self, exported: dict[str, frozenset[str]], targets: frozenset[str]):
        self.exported, self.targets = exported, targets
        self.problems: list[str] = []

    def of(self, node: object) -> frozenset[str]:
        if isinstance(node, VectorSelector):
            return self._selector(node)
        if isinstance(node, MatrixSelector):
            return self.of(node.vector_selector)
        if isinstance(node, ParenExpr | UnaryExpr | SubqueryExpr):
            return self.of(node.expr)
        if isinstance(node, Call):
            return self._call(node)
        if isinstance(node, AggregateExpr):
            return self._aggregate(node)
        if isinstance(node, BinaryExpr):
            return self._binary(node)
        return frozenset()  # a number or a string

    def _selector(self, node: VectorSelector) -> frozenset[str]:
        if node.name not in self.exported:
            self.problems.append(f"{node.name} is not exported")
            return frozenset()
        labels = self.exported[node.name] | self.targets
        for matcher in node.matchers.matchers:
            if matcher.name not in labels:
                self.problems.append(f"{node.name} has no label {matcher.name!r} (it has {sorted(labels)})")
        return labels

    def _call(self, node: Call) -> frozenset[str]:
        results = [self.of(arg) for arg in node.args]
        if node.func.name == "histogram_quantile":
            if "le" not in results[1]:
                self.problems.append(f"histogram_quantile over series without `le`: {node.prettify()}")
            return results[1] - {"le"}
        if node.func.name == "label_replace":
            return results[0] | {node.args[1].val}
        vectors = [labels for arg, labels in zip(node.args, results, strict=True)
                   if not isinstance(arg, NumberLiteral | StringLiteral)]
        return vectors[0] if vectors else frozenset()

    def _aggregate(self, node: AggregateExpr) -> frozenset[str]:
        inner = self.of(node.expr)
        if str(node.op) in ("topk", "bottomk", "limitk"):
            return inner
        if node.modifier is None:
            return frozenset()
        named = frozenset(node.modifier.labels)
        if node.modifier.type == AggModifierType.Without:
            return inner - named
        if not named <= inner:
            self.problems.append(f"{str(node.op)} by {sorted(named - inner)}: no such label beneath it")
        return named

    def _binary(self, node: BinaryExpr) -> frozenset[str]:
        left, right = self.of(node.lhs), self.of(node.rhs)
        if _is_scalar(node.lhs) or _is_scalar(node.rhs):
            return right if _is_scalar(node.lhs) else left
        modifier, op = node.modifier, str(node.op)
        if op == "or":
            return left | right
        matching = modifier.matching if modifier is not None else None
        if matching is not None and matching.type == LabelModifierType.Include:
            on = frozenset(matching.labels)
            if not (on <= left and on <= right):
                self.problems.append(f"on{sorted(on)} names labels one side lacks: {node.prettify()}")
        elif matching is None and op not in ("and", "unless") and left != right:
            self.problems.append(f"one-to-one match of {sorted(left)} with {sorted(right)} is empty: "
                                 f"{node.prettify()}")
        if modifier is not None and modifier.card in (VectorMatchCardinality.ManyToOne,
                                                      VectorMatchCardinality.OneToMany):
            one = right if modifier.card == VectorMatchCardinality.ManyToOne else left
            group = frozenset(modifier.group_labels or ())
            if not group <= one:
                self.problems.append(f"group labels {sorted(group - one)} not on the 'one' side: {node.prettify()}")
            return (left if modifier.card == VectorMatchCardinality.ManyToOne else right) | group
        return left


def check(expr: str, exported: dict[str, frozenset[str]], named: str = "") -> list[str]:
    """The problems of one expression, and of the labels `named` (a legend, an annotation) refers to."""
    labels = Labels(exported, target_labels())
    result = labels.of(parse(expr))
    wanted = set(re.findall(r"{{\s*(\w+)\s*}}", named)) | set(re.findall(r"\$labels\.(\w+)", named))
    missing = sorted(wanted - result)
    return labels.problems + ([f"refers to {missing}, not labels of the result {sorted(result)}"] if missing else [])


# The dashboard.

def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _variables(board: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in board["templating"]["list"]}


def grafana_expr(expr: str, variables: dict[str, dict]) -> str:
    """A panel's query as Prometheus receives it: Grafana's intervals as a duration, a variable as a regex."""
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in GRAFANA_INTERVALS:
            return "5m"
        assert name in variables, f"{expr}: ${name} is no dashboard variable"
        return ".+"
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", substitute, expr)


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, PromQL, legend) of every panel target and annotation of the dashboard."""
    board = dashboard()
    variables = _variables(board)
    queries = [(f"panel {panel['title']!r}", grafana_expr(target["expr"], variables), target.get("legendFormat", ""))
               for panel in board["panels"] for target in panel.get("targets", ())]
    queries += [(f"annotation {a['name']!r}", grafana_expr(a["expr"], variables), a.get("titleFormat", ""))
                for a in board["annotations"]["list"] if "expr" in a]
    return queries


def test_the_dashboard_is_a_grafana_dashboard_on_a_prometheus_variable():
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids are unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
    variables = _variables(board)
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    # Guards the guard: the queries the checks below read are the dashboard's, all of them.
    assert len(dashboard_queries()) > 20


def test_every_metric_and_label_the_dashboard_uses_is_exported(exported):
    problems = [f"{where}: {problem}" for where, expr, legend in dashboard_queries()
                for problem in check(expr, exported, legend)]
    for name, variable in _variables(dashboard()).items():
        if variable["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"]).groups()
            problems += [f"variable {name}: {problem}" for problem in check(f"count by ({label}) ({metric})",
                                                                            exported)]
    assert not problems, "\n".join(problems)


def test_the_checks_catch_what_a_scrape_would_not_show(exported):
    """Guards the guard: each kind of mistake is reported, and the exercised server has every family."""
    assert check('sum by (policy) (rate(bon_request_duration_seconds_count{best_of="2"}[5m]))', exported) == []
    assert check("rate(bon_requests_totl[5m])", exported) == ["bon_requests_totl is not exported"]
    assert check('bon_requests_total{status="500"}', exported)[0].startswith("bon_requests_total has no label 'status'")
    assert "no such label" in check("sum by (best_of) (rate(bon_requests_total[5m]))", exported)[0]
    assert "without `le`" in check("histogram_quantile(0.5, sum by (reward_version) "
                                   "(rate(bon_rm_batch_size_bucket[5m])))", exported)[0]
    assert "is empty" in check("sum by (policy) (rate(bon_tokens_generated_total[5m])) / sum(rate(bon_requests_total"
                               "[5m]))", exported)[0]
    assert "refers to ['best_of']" in check("sum by (policy) (rate(bon_requests_total[5m]))", exported,
                                            "{{policy}} N={{best_of}}")[0]
    # Labels Prometheus adds (scrape config) are allowed everywhere; the swap and the 429 left their series.
    assert check("sum by (pod, namespace) (bon_requests_queued)", exported) == []
    assert {"target", "result"} <= exported["bon_swaps_total"]
    assert check('sum(rate(bon_http_responses_total{status="429", handler="/v1/chat/completions"}[5m])) > 0',
                 exported) == []


# The alert rules and the scrape config.

def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())
    assert set(groups) == {"groups"} and groups["groups"], "a rules file holds `groups`"
    names = [group["name"] for group in groups["groups"]]
    assert len(set(names)) == len(names), "group names are unique"
    return [rule for group in groups["groups"] for rule in group["rules"]]


def test_the_alert_rules_file_is_well_formed():
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == {"BonHighErrorRate", "BonHighP99Latency", "BonGuardGapRising"}
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
        parse(rule["expr"])
        assert parse_duration(rule["for"]).total_seconds() > 0
        assert all(isinstance(v, str) for v in (*rule["labels"].values(), *rule["annotations"].values()))
        assert rule["labels"]["severity"] in ("page", "warning") and {"summary", "description"} <= set(
            rule["annotations"])


def test_every_metric_and_label_the_alert_rules_use_is_exported(exported):
    problems = [f"{rule['alert']}: {problem}" for rule in alert_rules()
                for problem in check(rule["expr"], exported, " ".join(rule["annotations"].values()))]
    assert not problems, "\n".join(problems)


def test_the_scrape_config_loads_the_rules_and_keeps_what_the_rules_group_by():
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert set(config) <= {"global", "rule_files", "scrape_configs", "alerting"}
    for name in config["rule_files"]:
        assert (PROMETHEUS.parent / name).is_file(), name
    assert [job["job_name"] for job in config["scrape_configs"]] == ["bon", "vllm"]
    for job in config["scrape_configs"]:
        for rule in job["relabel_configs"]:
            assert rule.get("action", "replace") in ("keep", "drop", "replace"), rule
            re.compile(rule.get("regex", "(.*)"))
            assert all(label.startswith("__meta_kubernetes_") for label in rule["source_labels"]), rule
    # The alerts group by namespace: the scrape config is what puts it on every series.
    assert {"namespace", "pod"} <= target_labels()
