"""deploy/k8s, checked offline: every manifest against the Kubernetes schemas (kubernetes-validate bundles them),
the references between the manifests, the bon container's flags and environment through bon's own settings
loader, the vLLM servers' arguments through vLLM's own parser, and the scrape config against the pods' labels.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes_validate import utils as kubernetes
from pydantic import ValidationError

from server.cli import add_arguments, settings_from_args
from server.settings import Settings
from tests.builders import REPO

K8S = REPO / "deploy" / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
VERSIONS = ("1.29", kubernetes.latest_version())
"""The oldest Kubernetes release the manifests are held to, and the newest whose schemas the package bundles."""
SECRET_VALUES = {("bon-api-keys", "api-keys"): '["sk-example"]'}
"""What the operator puts in the Secrets (docs/deploy.md), in the format the settings read."""


@functools.cache
def _parsed() -> tuple[dict, ...]:
    resources = yaml.safe_load(KUSTOMIZATION.read_text())["resources"]
    return tuple(doc for name in resources for doc in yaml.safe_load_all((K8S / name).read_text()) if doc)


def manifests() -> list[dict]:
    """Every object of every manifest the kustomization lists, in its order (a copy a test may change)."""
    return copy.deepcopy(list(_parsed()))


def named(kind: str, name: str) -> dict:
    (found,) = [doc for doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def pod_labels(deployment: dict) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def matches(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and `In` expressions) against a pod's labels."""
    expressions = selector.get("matchExpressions", ())
    assert all(e["operator"] == "In" for e in expressions), "only `In` is evaluated here"
    return selector.get("matchLabels", {}).items() <= labels.items() and all(
        labels.get(e["key"]) in e["values"] for e in expressions)


def deployments() -> list[dict]:
    return [doc for doc in manifests() if doc["kind"] == "Deployment"]


def service_deployment(service: dict) -> dict:
    """The one Deployment whose pods a Service selects."""
    (deployment,) = [d for d in deployments() if matches({"matchLabels": service["spec"]["selector"]}, pod_labels(d))]
    return deployment


def test_the_kustomization_lists_every_manifest():
    listed = yaml.safe_load(KUSTOMIZATION.read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)


def test_every_manifest_is_valid_against_the_kubernetes_schemas():
    errors = []
    for doc in manifests():
        for version in VERSIONS:
            try:
                kubernetes.validate(doc, version, strict=True)  # strict: an unknown field is an error
            except kubernetes.ValidationError as exc:
                where = ".".join(str(part) for part in exc.path)
                errors.append(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {where}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_the_validation_refuses_a_misspelt_field():
    """Guards the guard: strict validation fails on a field Kubernetes would silently drop."""
    deployment = named("Deployment", "bon")
    container = pod_spec(deployment)["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes.ValidationError, match="readinesProbe"):
        kubernetes.validate(deployment, VERSIONS[0], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (its built-in kustomize)")
def test_kustomize_renders_the_manifests_into_one_namespace():
    rendered = [doc for doc in yaml.safe_load_all(subprocess.run(["kubectl", "kustomize", str(K8S)], check=True,
                                                                 capture_output=True, text=True).stdout) if doc]
    assert len(rendered) == len(manifests())
    for doc in rendered:
        kubernetes.validate(doc, VERSIONS[-1], strict=True)
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "bon", doc["metadata"]["name"]


def test_the_manifests_refer_to_each_other():
    docs = manifests()
    defined = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    for deployment in deployments():
        assert matches(deployment["spec"]["selector"], pod_labels(deployment)), deployment["metadata"]["name"]
        spec = pod_spec(deployment)
        ports = {port["name"] for c in spec["containers"] for port in c.get("ports", ())}
        for volume in spec["volumes"]:
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in defined
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in defined
        for container in spec["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in ports, (container["name"], probe)
            for env in container.get("env", ()):
                if "valueFrom" in env:  # Secrets the operator creates (docs/deploy.md), never committed
                    ref = env["valueFrom"]["secretKeyRef"]
                    assert (ref["name"], ref["key"]) in SECRET_VALUES
    for service in (doc for doc in docs if doc["kind"] == "Service"):
        deployment = service_deployment(service)
        ports = {port["name"] for c in pod_spec(deployment)["containers"] for port in c["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= ports
    for hpa in (doc for doc in docs if doc["kind"] == "HorizontalPodAutoscaler"):
        assert ("Deployment", hpa["spec"]["scaleTargetRef"]["name"]) in defined
    for pdb in (doc for doc in docs if doc["kind"] == "PodDisruptionBudget"):
        assert any(matches(pdb["spec"]["selector"], pod_labels(d)) for d in deployments())


def test_the_deploy_guide_creates_the_secrets_the_pods_read():
    guide = (REPO / "docs" / "deploy.md").read_text()
    for name, key in SECRET_VALUES:
        assert f"create secret generic {name} --from-literal={key}=" in guide


def test_only_the_front_ends_and_prometheus_reach_the_vllm_servers():
    (policy,) = [doc for doc in manifests() if doc["kind"] == "NetworkPolicy"]
    pods = {d["metadata"]["name"]: pod_labels(d) for d in deployments()}
    guarded = {name for name, labels in pods.items() if matches(policy["spec"]["podSelector"], labels)}
    assert guarded == {"vllm-policy", "vllm-reward"}
    (rule,) = policy["spec"]["ingress"]
    allowed = {name for name, labels in pods.items() for peer in rule["from"]
               if "namespaceSelector" not in peer and matches(peer["podSelector"], labels)}
    assert allowed == {"bon"}
    assert {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]
            if "namespaceSelector" in peer} == {"prometheus"}


# The bon container, as its image starts it.

def _dockerfile() -> tuple[list[str], dict[str, str]]:
    """The image's ENTRYPOINT and its ENV, from the Dockerfile the manifests' image is built from."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    entrypoint: list[str] = []
    env: dict[str, str] = {}
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return entrypoint, env


def bon_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unset: frozenset[str] = frozenset()) -> Settings:
    """The settings the bon container starts with: the image's entrypoint and the manifest's args, the image's and
    the manifest's environment but for `unset` (Secrets with the documented values), the ConfigMaps mounted under
    `tmp_path`."""
    deployment = named("Deployment", "bon")
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    entrypoint, image_env = _dockerfile()
    argv = container.get("command", entrypoint) + container["args"]
    assert argv[:2] == ["bon", "serve"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounted: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        config_map = volumes[mount["name"]].get("configMap")
        if config_map is not None:
            where = tmp_path / mount["mountPath"].lstrip("/")
            where.mkdir(parents=True)
            for key, value in named("ConfigMap", config_map["name"])["data"].items():
                (where / key).write_text(value)
            mounted[mount["mountPath"]] = where
    for name in [name for name in os.environ if name.startswith("BON_")]:
        monkeypatch.delenv(name)
    for name, value in image_env.items():
        monkeypatch.setenv(name, value)
    for env in container.get("env", ()):
        if env["name"] in unset:
            continue
        if "valueFrom" in env:
            ref = env["valueFrom"]["secretKeyRef"]
            monkeypatch.setenv(env["name"], SECRET_VALUES[(ref["name"], ref["key"])])
        else:
            monkeypatch.setenv(env["name"], env["value"])

    def local(arg: str) -> str:
        for path, where in mounted.items():
            if arg.startswith(path + "/"):
                return str(where / arg.removeprefix(path + "/"))
        return arg

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_args(parser.parse_args([local(arg) for arg in argv[2:]]))


def vllm_option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def upstream(url: str, path: str) -> dict:
    """The vLLM container behind a front end's upstream URL: the URL names a Service, its port and `path`."""
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.path == path, url
    service = named("Service", parts.hostname)
    assert parts.port in {port["port"] for port in service["spec"]["ports"]}, url
    (container,) = pod_spec(service_deployment(service))["containers"]
    assert container["command"] == ["vllm", "serve"]
    return container


def test_the_bon_container_starts_with_settings_the_loader_accepts(tmp_path, monkeypatch):
    settings = bon_settings(tmp_path, monkeypatch)
    (container,) = pod_spec(named("Deployment", "bon"))["containers"]
    (port,) = container["ports"]
    assert (settings.host, settings.port, settings.api_keys) == ("0.0.0.0", port["containerPort"], ["sk-example"])
    assert settings.missing_checkpoints() == []
    # Each policy goes to vLLM policy servers, under the name they serve it by.
    for name, policy in settings.resolved_policies().items():
        assert policy.backend == "openai" and policy.base_urls, name
        for url in policy.base_urls:
            args = upstream(url, "/v1")["args"]
            assert vllm_option(args, "--served-model-name") == policy.remote_model
            # The front ends count prompt tokens with the tokenizer of the checkpoint the servers load.
            assert str(settings.openai_tokenizer) == args[0]
    # The reward model goes to the vLLM pooling server's /classify.
    assert settings.reward.backend == "remote"
    args = upstream(settings.reward.url, "/classify")["args"]
    assert vllm_option(args, "--runner") == "pooling"
    assert vllm_option(args, "--served-model-name") == settings.reward.model


def test_the_settings_check_catches_a_front_end_without_its_api_key(tmp_path, monkeypatch):
    """Guards the guard: the same container without the Secret's key is refused, as the server would refuse it."""
    with pytest.raises(ValidationError, match="no API key is set"):
        bon_settings(tmp_path, monkeypatch, unset=frozenset({"BON_API_KEYS"}))


@pytest.mark.vllm
def test_the_vllm_servers_arguments_are_accepted_by_vllm_serve():
    # What `vllm serve` parses and checks its arguments with (vllm/entrypoints/cli/serve.py).
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    runners = {}
    for deployment in deployments():
        (container,) = pod_spec(deployment)["containers"]
        if container.get("command") != ["vllm", "serve"]:
            continue
        args = parser.parse_args(container["args"])
        validate_parsed_serve_args(args)
        assert args.model_tag.startswith("/checkpoints/") and args.port == container["ports"][0]["containerPort"]
        runners[deployment["metadata"]["name"]] = (args.runner, args.served_model_name)
    assert runners == {"vllm-policy": ("auto", ["sft"]), "vllm-reward": ("pooling", ["rm"])}
    with pytest.raises(SystemExit):  # guards the guard: a runner vLLM does not know is refused
        parser.parse_args(["/checkpoints/rm", "--runner", "classify"])


# The scrape config against the pods it should find.

def _relabel(rules: list[dict], meta: dict[str, str]) -> dict[str, str] | None:
    """Prometheus's relabelling of one discovered target (keep, drop, replace); None when it is dropped."""
    labels = dict(meta)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(name, "") for name in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if (action == "keep" and not match) or (action == "drop" and match):
            return None
        if action == "replace" and match:
            labels[rule["target_label"]] = match.expand(rule.get("replacement", "$1").replace("$", "\\"))
    return {name: value for name, value in labels.items() if not name.startswith("__")}


def test_the_scrape_config_finds_each_server_by_its_pods_labels():
    jobs = {job["job_name"]: job["relabel_configs"] for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    found: dict[str, list[tuple[str, dict[str, str]]]] = {job: [] for job in jobs}
    for deployment in deployments():
        name = deployment["metadata"]["name"]
        labels = pod_labels(deployment)
        # Kubernetes discovery: one target per declared container port, pod labels sanitised into meta labels.
        meta = {f"__meta_kubernetes_pod_label_{re.sub(r'[^A-Za-z0-9_]', '_', key)}": value
                for key, value in labels.items()}
        meta |= {"__meta_kubernetes_namespace": "bon", "__meta_kubernetes_pod_name": f"{name}-0"}
        for container in pod_spec(deployment)["containers"]:
            for port in container["ports"]:
                for job, rules in jobs.items():
                    kept = _relabel(rules, meta | {"__meta_kubernetes_pod_container_port_name": port["name"]})
                    if kept is not None:
                        found[job].append((name, kept))
    assert found == {"bon": [("bon", {"namespace": "bon", "pod": "bon-0"})],
                     "vllm": [("vllm-policy", {"namespace": "bon", "pod": "vllm-policy-0", "component": "policy"}),
                              ("vllm-reward", {"namespace": "bon", "pod": "vllm-reward-0", "component": "reward"})]}
