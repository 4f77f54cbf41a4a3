"""Policies a cluster operator would check on the rendered manifests: GPUs only where they belong,
hardened and bounded containers, pinned images, placeholder secrets, labels, and who may reach whom."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest

from tests.unit.k8s.manifests import (
    OUTSIDE,
    Obj,
    Peer,
    container_env,
    containers,
    find_container,
    ingress_allowed,
    named,
    of_kind,
    pod_labels,
    pod_spec,
    secret_ref,
    secrets_used,
    selects,
    workloads,
)

GPU = "nvidia.com/gpu"
#: (kind, workload, container) of every container that computes with the model.
GPU_CONTAINERS = [
    ("Deployment", "claas-teacher", "teacher"),
    ("StatefulSet", "claas-trainer", "trainer"),
    ("Deployment", "claas-proxy", "vllm"),
]
GPU_WORKLOADS = {name for _, name, _ in GPU_CONTAINERS}
LONG_RUNNING = ("Deployment", "StatefulSet")
PLACEHOLDER = "change-me"


def _tolerates_gpu(spec: Obj) -> bool:
    return any(
        t.get("key") == GPU and t.get("effect") == "NoSchedule" and t.get("operator") == "Exists"
        for t in spec.get("tolerations", [])
    )


def _requires_gpu_node(spec: Obj) -> bool:
    required = spec.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return False
    return all(
        any(e["key"] == "nvidia.com/gpu.present" and e["values"] == ["true"] for e in term["matchExpressions"])
        for term in required["nodeSelectorTerms"]
    )


# ---- GPUs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "workload", "container"), GPU_CONTAINERS)
def test_gpu_overlay_gives_each_model_container_one_gpu_on_a_gpu_node(
    gpu: list[Obj], kind: str, workload: str, container: str
) -> None:
    resources = find_container(gpu, kind, workload, container)["resources"]
    assert resources["limits"][GPU] == "1"
    assert resources["requests"][GPU] == "1"
    spec = pod_spec(named(gpu, kind, workload))
    assert _tolerates_gpu(spec)
    assert _requires_gpu_node(spec)
    assert spec["runtimeClassName"]
    (shm,) = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    mounts = find_container(gpu, kind, workload, container)["volumeMounts"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in mounts


def test_gpu_overlay_keeps_other_pods_off_gpus(gpu: list[Obj]) -> None:
    for workload in workloads(gpu):
        gpu_containers = [c["name"] for c in containers(workload) if GPU in c["resources"].get("limits", {})]
        if workload["metadata"]["name"] in GPU_WORKLOADS:
            assert len(gpu_containers) == 1, workload["metadata"]["name"]
            continue
        spec = pod_spec(workload)
        assert gpu_containers == [], workload["metadata"]["name"]
        assert not _tolerates_gpu(spec) and "affinity" not in spec and "runtimeClassName" not in spec


def _config(objects: list[Obj]) -> dict[str, str]:
    (config,) = [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("claas-config-")]
    return config["data"]


def test_gpu_overlay_runs_the_models_on_cuda(gpu: list[Obj]) -> None:
    assert _config(gpu)["CLAAS_DEVICE"] == "cuda"


def test_cpu_overlay_has_no_gpu_anything(cpu: list[Obj]) -> None:
    assert GPU not in json.dumps(cpu)
    for workload in workloads(cpu):
        spec = pod_spec(workload)
        assert "tolerations" not in spec and "affinity" not in spec and "runtimeClassName" not in spec
    assert _config(cpu)["CLAAS_DEVICE"] == "cpu"


# ---- containers --------------------------------------------------------------------------------------


def test_every_container_has_requests_and_limits(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        for container in containers(workload):
            resources = container.get("resources", {})
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert {"cpu", "memory"} <= set(resources.get("limits", {})), where


def test_every_long_running_container_has_startup_readiness_and_liveness_probes(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        if workload["kind"] not in LONG_RUNNING:
            continue
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container), where
            startup = container["startupProbe"]
            # Model loading may take minutes: at least 5 minutes before the kubelet gives up.
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, where


def test_grpc_services_are_probed_on_the_standard_health_service(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        for container in containers(workload):
            grpc_ports = [p["containerPort"] for p in container.get("ports", []) if p["name"] == "grpc"]
            if grpc_ports:
                assert container["readinessProbe"]["grpc"]["port"] == grpc_ports[0]
                assert container["startupProbe"]["grpc"]["port"] == grpc_ports[0]


def test_every_container_runs_unprivileged_as_non_root(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        spec = pod_spec(workload)
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        for container in containers(workload):
            ctx = container["securityContext"]
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert ctx["runAsNonRoot"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in ctx["capabilities"], where
            assert ctx["readOnlyRootFilesystem"] is True, where


def test_service_accounts_mount_no_token(objects: list[Obj]) -> None:
    accounts = {sa["metadata"]["name"]: sa for sa in of_kind(objects, "ServiceAccount")}
    for sa in accounts.values():
        assert sa["automountServiceAccountToken"] is False
    for workload in workloads(objects):
        assert pod_spec(workload)["serviceAccountName"] in accounts


def _image_tag(image: str) -> str:
    """The tag (or digest) an image reference pins; "" when it pins none."""
    if "@" in image:
        return image.partition("@")[2]
    name, _, tag = image.rpartition(":")
    return "" if not name or "/" in tag else tag  # "registry:5000/name" has a port, not a tag


def test_images_are_pinned(objects: list[Obj]) -> None:
    images = {c["image"] for w in workloads(objects) for c in containers(w)}
    assert len(images) == 3  # CLaaS, MinIO, MinIO's client
    for image in images:
        assert _image_tag(image) not in ("", "latest"), f"{image} is not pinned"
    assert _image_tag("registry:5000/claas") == "" and _image_tag("minio/minio") == ""


def test_the_claas_image_is_one_image_in_every_role(objects: list[Obj], overlay: str) -> None:
    claas = {c["image"] for w in workloads(objects) for c in containers(w) if "minio" not in c["image"]}
    assert claas == {f"claas:0.1.0-{'cuda' if overlay == 'gpu' else 'cpu'}"}


# ---- secrets ---------------------------------------------------------------------------------------------


def test_secrets_hold_only_placeholders(objects: list[Obj]) -> None:
    secrets = of_kind(objects, "Secret")
    assert len(secrets) == 6
    for secret in secrets:
        assert "stringData" not in secret
        for key, encoded in secret["data"].items():
            value = base64.b64decode(encoded).decode()
            if key.endswith(".json"):
                # API keys are stored as SHA-256 of the key: the only one allowed is the placeholder's.
                hashes = {h.removeprefix("sha256:") for h in json.loads(value)}
                assert hashes == {hashlib.sha256(PLACEHOLDER.encode()).hexdigest()}, secret["metadata"]["name"]
            else:
                assert value.startswith(PLACEHOLDER), f"{secret['metadata']['name']}/{key}"


def test_credentials_come_from_secrets_never_inline(objects: list[Obj]) -> None:
    secret_like = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY", "API_KEY")
    config_keys = {k for cm in of_kind(objects, "ConfigMap") for k in cm["data"]}
    assert not [k for k in config_keys if any(s in k for s in secret_like)]
    for workload in workloads(objects):
        for container in containers(workload):
            for item in container.get("env", []):
                if any(s in item["name"] for s in secret_like) and not item["name"].endswith("_FILE"):
                    assert "secretKeyRef" in item.get("valueFrom", {}), item["name"]


#: What the services' MinIO user may do: the objects of the one bucket, and listing it.
SERVICE_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
SERVICE_BUCKET_ACTIONS = {"s3:ListBucket", "s3:GetBucketLocation"}


def _bucket_job(objects: list[Obj]) -> tuple[Obj, str]:
    job = named(objects, "Job", "claas-minio-bucket")
    (mc,) = pod_spec(job)["containers"]
    return mc, "\n".join(mc["args"])


def test_only_minio_and_its_bucket_job_hold_the_root_credentials(objects: list[Obj]) -> None:
    """Hole: storage and the proxy signed in to MinIO as root, able to create users and delete every bucket."""
    minio = find_container(objects, "StatefulSet", "claas-minio", "minio")
    root, _ = secret_ref(minio, "MINIO_ROOT_USER")
    holders = {(w["metadata"]["name"], c["name"]) for w in workloads(objects) for c in containers(w)
               if root in secrets_used(w, c)}  # fmt: skip
    assert holders == {("claas-minio", "minio"), ("claas-minio-bucket", "mc")}


def test_storage_the_proxy_and_the_trainers_sign_in_as_the_user_the_bucket_job_creates(objects: list[Obj]) -> None:
    mc, script = _bucket_job(objects)
    created = (secret_ref(mc, "SERVICE_ACCESS_KEY"), secret_ref(mc, "SERVICE_SECRET_KEY"))
    for kind, workload, container in [
        ("Deployment", "claas-storage", "storage"),
        ("Deployment", "claas-proxy", "proxy"),
        ("StatefulSet", "claas-trainer", "trainer"),  # its job records
    ]:
        service = find_container(objects, kind, workload, container)
        assert (secret_ref(service, "CLAAS_S3_ACCESS_KEY"), secret_ref(service, "CLAAS_S3_SECRET_KEY")) == created
    assert 'admin user add store "$SERVICE_ACCESS_KEY" "$SERVICE_SECRET_KEY"' in script
    assert 'admin policy attach store claas-service --user "$SERVICE_ACCESS_KEY"' in script


def test_the_services_policy_reaches_only_the_objects_of_the_bucket(objects: list[Obj]) -> None:
    mc, script = _bucket_job(objects)
    (template,) = re.findall(r"printf '([^']*)' \"\$bucket\" \"\$bucket\" >/tmp/mc/claas-service\.json", script)
    assert "admin policy create store claas-service /tmp/mc/claas-service.json" in script
    bucket = container_env(objects, mc)["CLAAS_STORE_URL"].removeprefix("s3://")
    policy = json.loads(template % (bucket, bucket))
    statements = policy["Statement"]
    assert all(st["Effect"] == "Allow" and set(st) == {"Effect", "Action", "Resource"} for st in statements)
    granted = {(action, resource) for st in statements for action in st["Action"] for resource in st["Resource"]}
    assert granted == {(a, f"arn:aws:s3:::{bucket}") for a in SERVICE_BUCKET_ACTIONS} | {
        (a, f"arn:aws:s3:::{bucket}/*") for a in SERVICE_ACTIONS
    }


def test_every_referenced_config_and_secret_exists(objects: list[Obj]) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for workload in workloads(objects):
        for volume in pod_spec(workload).get("volumes", []):
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in names
        for container in containers(workload):
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef") or source["secretRef"]
                assert (("ConfigMap" if "configMapRef" in source else "Secret"), ref["name"]) in names
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = named(objects, "Secret", ref["name"])
                    assert ref["key"] in secret["data"], f"{ref['name']} has no {ref['key']}"


# ---- labels, selectors and the objects around the workloads ---------------------------------------------


def test_every_object_and_pod_carries_the_recommended_labels(objects: list[Obj]) -> None:
    required = {"app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of"}
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert required <= set(labels), f"{obj['kind']}/{obj['metadata']['name']}"
        assert labels["app.kubernetes.io/part-of"] == "claas"
        assert labels["app.kubernetes.io/managed-by"] == "kustomize"
    for workload, labels in pod_labels(objects):
        assert required <= set(labels), workload["metadata"]["name"]


def test_services_and_budgets_select_exactly_one_workload(objects: list[Obj]) -> None:
    for obj in [*of_kind(objects, "Service"), *of_kind(objects, "PodDisruptionBudget")]:
        selector = obj["spec"]["selector"]
        selector = selector if "matchLabels" in selector else {"matchLabels": selector}
        chosen = [w["metadata"]["name"] for w, labels in pod_labels(objects) if selects(selector, labels)]
        assert len(chosen) == 1, f"{obj['kind']}/{obj['metadata']['name']} selects {chosen}"


def test_grpc_ports_are_named_for_protocol_detection(objects: list[Obj]) -> None:
    grpc_services = 0
    for service in of_kind(objects, "Service"):
        for port in service["spec"]["ports"]:
            if port["name"] == "grpc":
                grpc_services += 1
                assert port["appProtocol"] == "grpc"
                assert port["targetPort"] == "grpc"
    assert grpc_services == 5  # storage, teacher, trainer (headless), proxy and its peers (headless)


def test_storage_runs_replicas_that_roll_without_a_gap(objects: list[Obj]) -> None:
    storage = named(objects, "Deployment", "claas-storage")
    assert storage["spec"]["replicas"] >= 2
    strategy = storage["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0
    budget = named(objects, "PodDisruptionBudget", "claas-storage")
    assert budget["spec"]["maxUnavailable"] == 1  # a drain leaves one replica serving


def test_trainer_and_minio_are_stateful_sets_behind_their_services(objects: list[Obj]) -> None:
    for name in ("claas-trainer", "claas-minio"):
        service_name = named(objects, "StatefulSet", name)["spec"]["serviceName"]
        named(objects, "Service", service_name)
    claims = named(objects, "StatefulSet", "claas-minio")["spec"]["volumeClaimTemplates"]
    assert claims[0]["spec"]["resources"]["requests"]["storage"]


def test_minio_is_probed_on_its_health_endpoints(objects: list[Obj]) -> None:
    minio = find_container(objects, "StatefulSet", "claas-minio", "minio")
    assert minio["livenessProbe"]["httpGet"]["path"] == "/minio/health/live"
    assert minio["readinessProbe"]["httpGet"]["path"] == "/minio/health/ready"
    assert {e["name"] for e in minio["env"]} >= {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}


def test_the_proxy_scales_with_an_autoscaler(objects: list[Obj]) -> None:
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    proxy = named(objects, target["kind"], target["name"])
    assert proxy["metadata"]["labels"]["app.kubernetes.io/component"] == "proxy"
    assert "replicas" not in proxy["spec"]  # the autoscaler owns it
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


# ---- network -------------------------------------------------------------------------------------------


def _workload(objects: list[Obj], component: str) -> Obj:
    (found,) = [w for w, labels in pod_labels(objects) if labels["app.kubernetes.io/component"] == component]
    return found


def _peer(objects: list[Obj], component: str) -> Peer:
    return Peer(_workload(objects, component)["spec"]["template"]["metadata"]["labels"])


def test_only_the_proxy_is_reachable_from_outside_the_namespace(objects: list[Obj]) -> None:
    proxy = _workload(objects, "proxy")
    assert ingress_allowed(objects, proxy, 50050, OUTSIDE)
    assert ingress_allowed(objects, proxy, 8000, OUTSIDE)
    assert not ingress_allowed(objects, proxy, 8001, OUTSIDE), "vLLM checks its key on /v1/* only"
    assert not ingress_allowed(objects, proxy, 8001, _peer(objects, "trainer"))
    for component, port in [("storage", 50051), ("teacher", 50052), ("trainer", 50053), ("object-store", 9000)]:
        assert not ingress_allowed(objects, _workload(objects, component), port, OUTSIDE), component


def test_internal_services_answer_pods_of_the_namespace(objects: list[Obj]) -> None:
    for component, port, caller in [("storage", 50051, "trainer"), ("teacher", 50052, "trainer"),
                                    ("trainer", 50053, "proxy"), ("storage", 50051, "proxy")]:  # fmt: skip
        assert ingress_allowed(objects, _workload(objects, component), port, _peer(objects, caller))


def test_proxy_replicas_reach_each_other_by_a_rule_of_their_own(objects: list[Obj]) -> None:
    proxy = _workload(objects, "proxy")
    peers = [p for p in of_kind(objects, "NetworkPolicy") if p["metadata"]["name"] == "claas-proxy-peers"]
    others = [p for p in of_kind(objects, "NetworkPolicy") if p["metadata"]["name"] != "claas-proxy-peers"]
    assert ingress_allowed(peers + others, proxy, 50050, _peer(objects, "proxy"))
    # Without the public rule (an operator who narrows it to an ingress controller) routing still works.
    narrowed = [p for p in peers + others if p["metadata"]["name"] != "claas-proxy-public"]
    assert ingress_allowed(narrowed, proxy, 50050, _peer(objects, "proxy"))
    assert not ingress_allowed(narrowed, proxy, 8001, _peer(objects, "proxy"))
    service = named(objects, "Service", "claas-proxy-peers")
    assert service["spec"]["clusterIP"] == "None"  # one address record per ready pod


def test_minio_answers_only_storage_the_proxy_the_trainers_and_the_bucket_job(objects: list[Obj]) -> None:
    minio = _workload(objects, "object-store")
    for caller in ("storage", "proxy", "trainer", "bucket-init"):
        assert ingress_allowed(objects, minio, 9000, _peer(objects, caller)), caller
    assert not ingress_allowed(objects, minio, 9000, _peer(objects, "teacher"))
