"""Regenerates the checked-in gRPC stubs from c2c.proto.

Run `python -m protos.regenerate` after editing the .proto; tests call `generate()` into a
temporary folder to catch stubs that drifted from the contract.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO = "protos/c2c.proto"
GENERATED = ("c2c_pb2.py", "c2c_pb2.pyi", "c2c_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Writes the stubs under `out_root/protos/` and returns their paths."""
    from grpc_tools import protoc

    (out_root / "protos").mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(REPO_ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    return [out_root / "protos" / name for name in GENERATED]


if __name__ == "__main__":
    for path in generate(REPO_ROOT):
        print(path.relative_to(REPO_ROOT))
    sys.exit(0)
