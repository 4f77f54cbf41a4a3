"""The rendered overlays, once per session. Rendering needs kubectl (its built-in kustomize); without it
the tests that need a rendering are skipped with that reason, and the schema check of the base's own
files still runs."""

from __future__ import annotations

import pytest

from tests.unit.k8s.manifests import OVERLAYS, Obj, find_kubectl, render


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = find_kubectl()
    if path is None:
        pytest.skip("kubectl not found (PATH or the Python environment): rendering the overlays is skipped")
    return path


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[Obj]]:
    return {overlay: render(kubectl, overlay) for overlay in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def objects(rendered: dict[str, list[Obj]], overlay: str) -> list[Obj]:
    """Every object of one overlay, as rendered."""
    return rendered[overlay]


@pytest.fixture
def cpu(rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered["cpu"]


@pytest.fixture
def gpu(rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered["gpu"]
