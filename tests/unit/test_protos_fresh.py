"""The committed Python of the contracts is what the .proto files generate today."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    sources = sorted((PROTOS / "claas" / "v1").glob("*.proto"))
    assert sources, "no .proto files found"
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}"]
    cmd += [f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}"]
    subprocess.run([*cmd, *map(str, sources)], check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*"))
    assert generated
    stale = [str(rel) for rel in generated if (tmp_path / rel).read_bytes() != (PROTOS / rel).read_bytes()]
    assert not stale, f"stale generated files (run `make protos`): {stale}"


def test_buf_lint_is_clean() -> None:
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if buf is None:
        pytest.fail("buf is missing: install the dev extra (buf-bin)")
    result = subprocess.run([buf, "lint"], cwd=PROTOS, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
