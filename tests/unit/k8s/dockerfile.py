"""Reading the Dockerfile's instructions without a Docker engine."""

from __future__ import annotations

import shlex

from tests.unit.k8s.manifests import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in joined]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, rest in instructions():
        if name == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                assert env.get(key, value) == value, f"ENV {key} set to two values"
                env[key] = value
    return env
