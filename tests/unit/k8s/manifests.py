"""Reading the Kubernetes manifests of k8s/ the way a cluster would: rendered by kustomize, each
container's environment resolved from its ConfigMaps and Secrets, NetworkPolicies evaluated."""

from __future__ import annotations

import base64
import importlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic_settings import BaseSettings

from services.common.settings import CommonSettings

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "k8s"
OVERLAYS = ("cpu", "gpu")
#: Kubernetes version whose schemas the rendered objects must satisfy (native gRPC probes are GA since 1.27).
KUBERNETES_VERSION = "1.32.0"
#: The CLaaS roles, each run as ``python -m services.<role>``.
ROLES = ("storage", "teacher", "trainer", "proxy")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")

Obj = dict


def find_kubectl() -> str | None:
    """kubectl of the project's environment first (a pip-installed one), then the one on PATH."""
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("kubectl")


def render(kubectl: str, overlay: str) -> list[Obj]:
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise AssertionError(f"kubectl kustomize overlays/{overlay} failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def base_resource_files() -> list[Path]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [K8S / "base" / name for name in kustomization["resources"]]


def load_yaml_objects(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def role_of(container: Obj) -> str | None:
    """The CLaaS role a container runs (``python -m services.<role>``), or None for anything else."""
    command = [*container.get("command", []), *container.get("args", [])]
    for i, word in enumerate(command[:-1]):
        if word == "-m" and command[i + 1].startswith("services."):
            return command[i + 1].removeprefix("services.")
    return None


def role_containers(objects: list[Obj]) -> dict[str, tuple[Obj, Obj]]:
    """role -> (workload, container); each role must run in exactly one container."""
    found: dict[str, list[tuple[Obj, Obj]]] = {}
    for workload in workloads(objects):
        for container in containers(workload):
            role = role_of(container)
            if role is not None:
                found.setdefault(role, []).append((workload, container))
    for role, places in found.items():
        assert len(places) == 1, f"role {role} runs in {len(places)} containers"
    return {role: places[0] for role, places in found.items()}


def find_container(objects: list[Obj], kind: str, workload_name: str, container_name: str) -> Obj:
    workload = named(objects, kind, workload_name)
    matches = [c for c in containers(workload) if c["name"] == container_name]
    assert len(matches) == 1, f"{kind} {workload_name} has no single container {container_name}"
    return matches[0]


def _secret_value(objects: list[Obj], name: str, key: str) -> str:
    secret = named(objects, "Secret", name)
    if key in secret.get("stringData", {}):
        return secret["stringData"][key]
    assert key in secret.get("data", {}), f"Secret {name} has no key {key}"
    return base64.b64decode(secret["data"][key]).decode()


def secret_ref(container: Obj, env_name: str) -> tuple[str, str]:
    """(Secret, key) that the container's variable ``env_name`` is read from; fails if it is not a Secret's."""
    (item,) = [i for i in container.get("env", []) if i["name"] == env_name]
    ref = item.get("valueFrom", {}).get("secretKeyRef")
    assert ref is not None, f"{container['name']}: {env_name} does not come from a Secret"
    return ref["name"], ref["key"]


def secrets_used(workload: Obj, container: Obj) -> set[str]:
    """Every Secret the container reads: env values, envFrom, and the pod's secret volumes it mounts."""
    used = {
        i["valueFrom"]["secretKeyRef"]["name"]
        for i in container.get("env", [])
        if "secretKeyRef" in i.get("valueFrom", {})
    }
    used |= {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
    mounted = {m["name"] for m in container.get("volumeMounts", [])}
    used |= {
        v["secret"]["secretName"]
        for v in pod_spec(workload).get("volumes", [])
        if "secret" in v and v["name"] in mounted
    }
    return used


def container_env(objects: list[Obj], container: Obj) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom first, then env (which wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(named(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            secret = named(objects, "Secret", source["secretRef"]["name"])
            env.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = _secret_value(objects, ref["name"], ref["key"])
        elif "configMapKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = named(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[item["name"]] = POD_IP  # what the kubelet fills in: a pod address, as the settings see it
        else:
            raise AssertionError(f"unexpected env source {item}")
    return env


#: The address a rendered pod gets in place of ``status.podIP``.
POD_IP = "10.0.0.7"

_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def references(text: str) -> list[str]:
    """The $(NAME) references Kubernetes expands in command, args and env values."""
    return _REFERENCE.findall(text)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(NAME) expansion; an unknown name stays as it is, as in Kubernetes."""
    return _REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def cli_options(args: list[str], env: dict[str, str]) -> dict[str, str]:
    """``--name=value`` / ``--flag`` arguments after expansion, as a dict (flags map to "")."""
    options: dict[str, str] = {}
    for arg in args:
        expanded = expand(arg, env)
        if expanded.startswith("--"):
            name, _, value = expanded.partition("=")
            options[name] = value
    return options


# ---- the services' settings, read from the code ---------------------------------------------------------


def settings_class(role: str) -> type[CommonSettings]:
    """The settings class of ``services.<role>.settings`` (the CommonSettings subclass defined there)."""
    module = importlib.import_module(f"services.{role}.settings")
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, CommonSettings)
        and value is not CommonSettings
        and value.__module__ == module.__name__
    ]
    assert len(classes) == 1, f"services.{role}.settings defines {len(classes)} settings classes"
    return classes[0]


def env_names(cls: type[BaseSettings]) -> set[str]:
    prefix = cls.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


# ---- NetworkPolicy evaluation (the subset these manifests use) ------------------------------------------


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Peer:
    """Where a connection comes from: a pod of the namespace (with its labels) or outside it."""

    labels: dict[str, str] | None  # None: from outside the namespace

    @property
    def in_namespace(self) -> bool:
        return self.labels is not None


OUTSIDE = Peer(None)


def _port_number(port: int | str, target_containers: list[Obj]) -> int:
    if isinstance(port, int):
        return port
    for container in target_containers:
        for p in container.get("ports", []):
            if p.get("name") == port:
                return p["containerPort"]
    raise AssertionError(f"named port {port} not found on the target pod")


def _peer_allowed(rule: Obj, peer: Peer) -> bool:
    sources = rule.get("from")
    if not sources:
        return True
    for source in sources:
        if set(source) == {"podSelector"} and peer.in_namespace and selects(source["podSelector"], peer.labels):
            return True
        if set(source) - {"podSelector"}:
            raise AssertionError(f"peer kind not evaluated by this test: {source}")
    return False


def ingress_allowed(objects: list[Obj], target: Obj, port: int, peer: Peer) -> bool:
    """Whether NetworkPolicies let ``peer`` open ``port`` on the pods of workload ``target``."""
    labels = target["spec"]["template"]["metadata"]["labels"]
    target_containers = containers(target)
    policies = [
        p
        for p in of_kind(objects, "NetworkPolicy")
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"]) and selects(p["spec"]["podSelector"], labels)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            port_ok = not ports or any(_port_number(p["port"], target_containers) == port for p in ports)
            if port_ok and _peer_allowed(rule, peer):
                return True
    return False


def pod_labels(objects: list[Obj]) -> Iterator[tuple[Obj, dict[str, str]]]:
    for workload in workloads(objects):
        yield workload, workload["spec"]["template"]["metadata"]["labels"]
