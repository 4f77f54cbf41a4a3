"""The manifests start what the code has: each role's real entry point, environment variable names the
role's settings class declares (read from the code, so a renamed field fails here), values that load,
addresses that lead to the right Service, and a vLLM sidecar that matches the proxy and the trainer."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

from services.common.model import PACKAGED_MODEL
from services.common.settings import EXAMPLE_SECRET_PREFIX, CommonSettings, SettingsError, load_settings
from tests.unit.k8s.dockerfile import dockerfile_env
from tests.unit.k8s.manifests import (
    POD_IP,
    REPO,
    ROLES,
    Obj,
    cli_options,
    container_env,
    env_names,
    find_container,
    named,
    of_kind,
    pod_labels,
    pod_spec,
    references,
    role_containers,
    secret_ref,
    settings_class,
    workloads,
)

#: Settings fields that name another role's address, and the role they must lead to.
ADDRESS_FIELDS = {"storage_addr": "storage", "teacher_addr": "teacher", "trainer_addr": "trainer"}


def loaded_settings(
    monkeypatch: pytest.MonkeyPatch, role: str, env: dict[str, str], *, own_secrets: bool = True
) -> CommonSettings:
    """The role's settings exactly as its process would build them from this environment; with
    ``own_secrets`` the example secrets are replaced, as an operator's overlay replaces them."""
    for name in [n for n in os.environ if n.startswith("CLAAS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        own = own_secrets and value.startswith(EXAMPLE_SECRET_PREFIX)
        monkeypatch.setenv(name, value.replace(EXAMPLE_SECRET_PREFIX, "operators-own", 1) if own else value)
    return load_settings(settings_class(role))


def _grpc_port(container: Obj) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
    return port


def _service_role(objects: list[Obj], host: str, port: int | str) -> str:
    """The role behind Service ``host`` on ``port`` (a number, or the name of an SRV record's port)."""
    service = named(objects, "Service", host)
    key = "name" if isinstance(port, str) else "port"
    assert port in [p.get(key) for p in service["spec"]["ports"]], f"{host} has no port {port}"
    roles = role_containers(objects)
    for role, (workload, _) in roles.items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        if all(labels.get(k) == v for k, v in service["spec"]["selector"].items()):
            return role
    raise AssertionError(f"Service {host} leads to no CLaaS role")


def test_every_role_runs_its_real_entry_point(objects: list[Obj]) -> None:
    roles = role_containers(objects)
    assert set(roles) == set(ROLES)
    for role, (_, container) in roles.items():
        assert container["command"] == ["python", "-m", f"services.{role}"]
        assert "args" not in container
        assert (REPO / "services" / role / "__main__.py").is_file()
        assert importlib.util.find_spec(f"services.{role}.__main__") is not None


def test_environment_names_are_settings_fields(objects: list[Obj]) -> None:
    roles = role_containers(objects)
    known = {role: env_names(settings_class(role)) for role in ROLES}
    for role, (_, container) in roles.items():
        explicit = {item["name"] for item in container.get("env", []) if item["name"].startswith("CLAAS_")}
        assert explicit - known[role] == set(), f"{role} sets variables its settings do not have"
    for config in of_kind(objects, "ConfigMap"):
        names = {k for k in config["data"] if k.startswith("CLAAS_")}
        assert names - set().union(*known.values()) == set(), config["metadata"]["name"]


def test_a_renamed_setting_would_be_caught() -> None:
    """The names come from the classes themselves, field by field."""
    proxy = env_names(settings_class("proxy"))
    assert {"CLAAS_PORT", "CLAAS_INTERNAL_TOKEN", "CLAAS_STORE_URL", "CLAAS_API_KEYS_FILE"} <= proxy
    assert "CLAAS_API_KEY_FILE" not in proxy


def test_each_role_loads_its_settings_from_the_manifests(monkeypatch: pytest.MonkeyPatch, objects: list[Obj]) -> None:
    for role, (workload, container) in role_containers(objects).items():
        env = container_env(objects, container)
        settings = loaded_settings(monkeypatch, role, env)
        assert settings.host == "0.0.0.0", role
        assert settings.port == _grpc_port(container), role
        assert settings.internal_token, f"{role} runs without the internal token"
        assert settings.grace_period_s < pod_spec(workload)["terminationGracePeriodSeconds"], role
        assert {p["containerPort"] for p in container["ports"] if p["name"] == "metrics"} == {settings.metrics_port}


def test_no_role_starts_on_the_example_secrets(monkeypatch: pytest.MonkeyPatch, objects: list[Obj]) -> None:
    """Hole: the example secrets worked; a cluster applied as shipped let anyone who read them in."""
    for role, (_, container) in role_containers(objects).items():
        env = container_env(objects, container)
        with pytest.raises(SettingsError, match="is the example value") as refused:
            loaded_settings(monkeypatch, role, env, own_secrets=False)
        assert "CLAAS_INTERNAL_TOKEN" in str(refused.value) or "CLAAS_S3_" in str(refused.value), role
        with pytest.raises(
            SettingsError, match=r"CLAAS_INTERNAL_TOKEN is empty while the service listens on 0\.0\.0\.0"
        ):
            loaded_settings(monkeypatch, role, env | {"CLAAS_INTERNAL_TOKEN": ""})


def test_addresses_lead_to_the_roles_they_name(monkeypatch: pytest.MonkeyPatch, objects: list[Obj]) -> None:
    checked = 0
    for role, (_, container) in role_containers(objects).items():
        env = container_env(objects, container)
        settings = loaded_settings(monkeypatch, role, env)
        for field, target in ADDRESS_FIELDS.items():
            if field not in type(settings).model_fields:
                continue
            assert f"CLAAS_{field.upper()}" in env, f"{role} leaves {field} at its loopback default"
            address = getattr(settings, field)
            if address.startswith("srv:"):
                # srv:_<port name>._tcp.<Service>: a headless Service's records, one per ready pod.
                port_name, protocol, host = address.removeprefix("srv:").split(".")[:3]
                assert protocol == "_tcp" and port_name.startswith("_"), address
                assert named(objects, "Service", host)["spec"].get("clusterIP") == "None", f"{host} is not headless"
                assert _service_role(objects, host, port_name[1:]) == target, f"{role}.{field}"
            else:
                host, _, port = address.rpartition(":")
                assert _service_role(objects, host, int(port)) == target, f"{role}.{field}"
            checked += 1
    assert checked >= 4  # trainer -> storage, teacher; proxy -> storage, trainer


def test_each_proxy_finds_its_peers_and_names_itself_among_them(
    monkeypatch: pytest.MonkeyPatch, objects: list[Obj]
) -> None:
    _, container = role_containers(objects)["proxy"]
    proxy = loaded_settings(monkeypatch, "proxy", container_env(objects, container))
    assert proxy.route_by_adapter
    host, _, port = proxy.proxy_peers.removeprefix("dns:///").rpartition(":")
    assert proxy.proxy_peers.startswith("dns:///")
    assert named(objects, "Service", host)["spec"]["clusterIP"] == "None"  # the pods' own addresses
    assert _service_role(objects, host, int(port)) == "proxy"
    assert proxy.proxy_peer_addr == f"{POD_IP}:{proxy.port}"  # how the records name this pod


def test_trainer_threads_fit_its_cpu_limit(monkeypatch: pytest.MonkeyPatch, cpu: list[Obj]) -> None:
    _, container = role_containers(cpu)["trainer"]
    trainer = loaded_settings(monkeypatch, "trainer", container_env(cpu, container))
    assert 1 <= trainer.torch_threads <= int(container["resources"]["limits"]["cpu"])


def test_one_base_model_everywhere(monkeypatch: pytest.MonkeyPatch, objects: list[Obj]) -> None:
    models = set()
    for role, (_, container) in role_containers(objects).items():
        settings = loaded_settings(monkeypatch, role, container_env(objects, container))
        if "base_model" in type(settings).model_fields:
            models.add(settings.base_model)
    assert len(models) == 1


def test_storage_and_proxy_share_the_object_store(monkeypatch: pytest.MonkeyPatch, objects: list[Obj]) -> None:
    stores = set()
    for role in ("storage", "proxy"):
        _, container = role_containers(objects)[role]
        settings = loaded_settings(monkeypatch, role, container_env(objects, container))
        assert settings.store_url.startswith("s3://")
        assert settings.s3_access_key.get_secret_value() and settings.s3_secret_key.get_secret_value()
        endpoint = urlparse(settings.s3_endpoint)
        minio = named(objects, "Service", endpoint.hostname)
        assert endpoint.port in [p["port"] for p in minio["spec"]["ports"]]
        stores.add((settings.store_url, settings.s3_endpoint))
    assert len(stores) == 1
    job = named(objects, "Job", "claas-minio-bucket")
    script = "\n".join(pod_spec(job)["containers"][0]["args"])
    assert "CLAAS_STORE_URL" in script and "CLAAS_S3_ENDPOINT" in script


def _vllm(objects: list[Obj]) -> tuple[Obj, dict[str, str], dict[str, str]]:
    container = find_container(objects, "Deployment", "claas-proxy", "vllm")
    env = container_env(objects, container)
    return container, env, cli_options(container["args"], env)


def test_the_vllm_sidecar_serves_what_the_proxy_and_trainer_expect(
    monkeypatch: pytest.MonkeyPatch, objects: list[Obj]
) -> None:
    container, env, options = _vllm(objects)
    for arg in container["args"]:
        assert set(references(arg)) <= set(env), f"{arg} names a variable the container lacks"
    roles = role_containers(objects)
    proxy = loaded_settings(monkeypatch, "proxy", container_env(objects, roles["proxy"][1]))
    trainer = loaded_settings(monkeypatch, "trainer", container_env(objects, roles["trainer"][1]))
    assert container["command"] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    vllm_package = importlib.util.find_spec("vllm")
    assert vllm_package is not None and vllm_package.origin is not None
    assert (Path(vllm_package.origin).parent / "entrypoints" / "openai" / "api_server.py").is_file()
    assert "--enable-lora" in options
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert options["--served-model-name"] == proxy.base_model
    assert int(options["--max-lora-rank"]) >= trainer.max_lora_rank
    assert int(options["--max-cpu-loras"]) >= proxy.max_loaded_adapters
    assert int(options["--max-cpu-loras"]) >= int(options["--max-loras"])
    vllm_url = urlparse(proxy.vllm_url)
    assert vllm_url.hostname in ("127.0.0.1", "localhost")  # the sidecar, never another pod's vLLM
    assert [p["containerPort"] for p in container["ports"]] == [vllm_url.port] == [int(options["--port"])]


def test_vllm_requires_the_key_the_proxy_sends(monkeypatch: pytest.MonkeyPatch, objects: list[Obj]) -> None:
    """Hole: the proxy's vLLM loaded adapters (from paths it is told) for anyone who reached its port."""
    vllm, _, options = _vllm(objects)
    _, container = role_containers(objects)["proxy"]
    key = secret_ref(vllm, "VLLM_API_KEY")
    assert key[0].startswith("claas-vllm-api-key-")  # a Secret of its own, not one of the other credentials
    assert secret_ref(container, "CLAAS_VLLM_API_KEY") == key
    assert "--api-key" not in options  # read from the environment: the key stays off the command line
    proxy_env = container_env(objects, container)
    assert loaded_settings(monkeypatch, "proxy", proxy_env).vllm_api_key.get_secret_value()
    with pytest.raises(SettingsError, match=r"CLAAS_VLLM_API_KEY is empty while the service listens on 0\.0\.0\.0"):
        loaded_settings(monkeypatch, "proxy", proxy_env | {"CLAAS_VLLM_API_KEY": ""})


def test_the_packaged_model_path_is_where_the_image_puts_it(objects: list[Obj]) -> None:
    _, _, options = _vllm(objects)
    if options["--served-model-name"] == PACKAGED_MODEL:
        assert options["--model"] == f"{dockerfile_env()['CLAAS_MODEL_CACHE']}/{PACKAGED_MODEL}"


def test_proxy_and_vllm_share_the_adapter_folder(monkeypatch: pytest.MonkeyPatch, objects: list[Obj]) -> None:
    _, container = role_containers(objects)["proxy"]
    proxy = loaded_settings(monkeypatch, "proxy", container_env(objects, container))
    vllm, _, _ = _vllm(objects)

    def mount(c: Obj, path: Path) -> Obj:
        (found,) = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == path]
        return found

    writer, reader = mount(container, proxy.adapter_dir), mount(vllm, proxy.adapter_dir)
    assert writer["name"] == reader["name"]
    assert not writer.get("readOnly") and reader["readOnly"] is True


def test_proxy_reads_api_keys_from_the_mounted_secret(monkeypatch: pytest.MonkeyPatch, objects: list[Obj]) -> None:
    workload, container = role_containers(objects)["proxy"]
    proxy = loaded_settings(monkeypatch, "proxy", container_env(objects, container))
    assert proxy.api_keys_file is not None
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == proxy.api_keys_file.parent]
    (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
    secret = named(objects, "Secret", volume["secret"]["secretName"])
    assert proxy.api_keys_file.name in secret["data"]


def test_http_surface_is_served_on_the_published_port(monkeypatch: pytest.MonkeyPatch, objects: list[Obj]) -> None:
    _, container = role_containers(objects)["proxy"]
    proxy = loaded_settings(monkeypatch, "proxy", container_env(objects, container))
    assert proxy.http_host == "0.0.0.0"
    assert [p["containerPort"] for p in container["ports"] if p["name"] == "http"] == [proxy.http_port]


def test_non_role_containers_are_the_expected_ones(objects: list[Obj]) -> None:
    """Every container is a role, the vLLM sidecar, MinIO or its bucket job: nothing unexplained runs."""
    names = {(w["metadata"]["name"], c["name"]) for w in workloads(objects) for c in pod_spec(w)["containers"]}
    assert names == {
        ("claas-storage", "storage"),
        ("claas-teacher", "teacher"),
        ("claas-trainer", "trainer"),
        ("claas-proxy", "proxy"),
        ("claas-proxy", "vllm"),
        ("claas-minio", "minio"),
        ("claas-minio-bucket", "mc"),
    }
    assert all("initContainers" not in pod_spec(w) for w, _ in pod_labels(objects))
