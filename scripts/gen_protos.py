"""Regenerate the committed protobuf and gRPC code (and typed stubs) from protos/ into adaspec/v1/.

    python scripts/gen_protos.py            # write
    python scripts/gen_protos.py --out DIR  # write elsewhere (the freshness test diffs against it)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: Path) -> list[Path]:
    sources = sorted(PROTOS.glob("adaspec/v1/*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTOS}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + [str(s.relative_to(PROTOS)) for s in sources]) != 0:
        raise RuntimeError("protoc failed")
    return sorted((out / "adaspec" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT)
    for path in generate(parser.parse_args().out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
