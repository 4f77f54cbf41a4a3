"""Both overlays render, and every object validates against the Kubernetes schemas (offline)."""

from __future__ import annotations

import copy

import kubernetes_validate

from tests.unit.k8s.manifests import (
    KUBERNETES_VERSION,
    Obj,
    base_resource_files,
    load_yaml_objects,
    named,
    of_kind,
)


def validation_errors(objects: list[Obj]) -> list[str]:
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(exc.message)
    return errors


def test_rendered_objects_validate_against_the_kubernetes_schemas(objects: list[Obj], overlay: str) -> None:
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "Deployment", "StatefulSet", "Job", "Service", "NetworkPolicy"} <= kinds, overlay
    assert {"PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap", "Secret", "ServiceAccount"} <= kinds
    assert validation_errors(objects) == []


def test_the_schema_check_rejects_a_misspelt_field(cpu: list[Obj]) -> None:
    broken = copy.deepcopy(named(cpu, "Deployment", "claas-storage"))
    probe = broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["periodSecond"] = probe.pop("periodSeconds")
    (error,) = validation_errors([broken])
    assert "readinessProbe" in error and "periodSecond" in error


def test_base_files_validate_without_rendering() -> None:
    """Runs without kubectl too: the base's own objects are complete, only the generated ones are missing."""
    objects = [obj for path in base_resource_files() for obj in load_yaml_objects(path)]
    assert len(of_kind(objects, "Deployment")) == 3
    assert validation_errors(objects) == []


def test_every_object_lands_in_the_one_namespace(objects: list[Obj]) -> None:
    (namespace,) = of_kind(objects, "Namespace")
    others = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    assert others == {namespace["metadata"]["name"]}
