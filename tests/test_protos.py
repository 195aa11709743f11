"""The committed generated code must match protos/ (CI regenerates it and fails on a diff)."""

from pathlib import Path

import pytest

pytest.importorskip("grpc_tools")

from scripts.gen_protos import ROOT, generate  # noqa: E402


def test_generated_code_is_fresh(tmp_path):
    fresh = generate(tmp_path)
    assert fresh, "no generated files"
    committed_dir = ROOT / "adaspec" / "v1"
    committed = sorted(p.name for p in committed_dir.glob("*_pb2*.py*"))
    assert committed == [p.name for p in fresh], "generated file set differs: run python scripts/gen_protos.py"
    stale = [p.name for p in fresh if p.read_bytes() != (committed_dir / p.name).read_bytes()]
    assert not stale, f"stale generated code {stale}: run python scripts/gen_protos.py"


def test_generated_code_imports_without_torch():
    import subprocess
    import sys

    code = "import adaspec, adaspec.v1.coordinator_pb2_grpc, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(ROOT))
