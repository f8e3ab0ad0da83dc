"""Command-line choices and defaults both services (and ``c2c generate``) share.

Typer turns these enums into validated ``--codec``/``--dtype`` choices listed in ``--help``.
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import typer

from protos import c2c_pb2

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


class CodecChoice(str, Enum):
    """KV wire layouts by their short names."""

    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"
    int4 = "int4"

    @property
    def wire(self) -> int:
        return c2c_pb2.Codec.Value(f"CODEC_{self.value.upper()}")


class DTypeChoice(str, Enum):
    """Compute dtypes; ``auto`` is bfloat16 on a GPU and float32 on a CPU."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def resolve_device(device: str) -> str:
    """``auto`` is cuda when a GPU is visible, else cpu."""
    if device != "auto":
        return device
    import torch  # only the services need it; `c2c generate` stays light

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: DTypeChoice, device: str) -> str:
    if dtype is not DTypeChoice.auto:
        return dtype.value
    return "bfloat16" if device.startswith("cuda") else "float32"


def model_or_bundled(path: Path | None, part: str, option: str) -> Path:
    """``path``, else the bundled default pair's ``part``; exits with one line when neither."""
    if path is not None:
        return path
    bundled = BUNDLED_DIR / part
    if bundled.is_dir():
        return bundled
    typer.echo(f"error: {option} is required (no bundled default pair is installed)", err=True)
    raise typer.Exit(2)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
