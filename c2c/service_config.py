"""Command-line choices and defaults both services (and ``c2c generate``) share.

Typer turns these enums into validated ``--codec``/``--dtype`` choices listed in ``--help``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import grpc
import typer

from c2c.errors import C2CError
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


# Options both servers take, declared once: name, environment variable and help.
HostOption = Annotated[str, typer.Option(envvar="C2C_HOST", help="Address to bind.")]
PortOption = Annotated[
    int, typer.Option(envvar="C2C_PORT", help="Port to bind; 0 picks a free one.")
]
DTypeOption = Annotated[DTypeChoice, typer.Option(envvar="C2C_DTYPE", help="Compute dtype.")]
DeviceOption = Annotated[
    str,
    typer.Option(envvar="C2C_DEVICE", help="torch device; auto = cuda when available, else cpu."),
]
DefaultCodecOption = Annotated[
    CodecChoice,
    typer.Option(envvar="C2C_DEFAULT_CODEC", help="KV layout when a request says none."),
]
WorkersOption = Annotated[int, typer.Option(envvar="C2C_WORKERS", help="Concurrent RPCs.")]
MetricsPortOption = Annotated[
    int,
    typer.Option(
        envvar="C2C_METRICS_PORT", help="Serve Prometheus /metrics on this port (0: off)."
    ),
]
TlsKeyOption = Annotated[
    Path | None, typer.Option(envvar="C2C_TLS_KEY", help="PEM private key of --tls-cert.")
]
LogLevelOption = Annotated[str, typer.Option(envvar="C2C_LOG_LEVEL", help="Python log level.")]


def run_server(serve: Callable[[], object]) -> None:
    """Run a server's ``serve()``; a configuration or start-up error is one line and exit 1."""
    try:
        serve()
    except (C2CError, OSError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


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


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for mutual TLS between receiver and sharer; all three or none."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def __post_init__(self) -> None:
        given = [f is not None for f in (self.cert, self.key, self.ca)]
        if any(given) and not all(given):
            raise ValueError("TLS needs all of --tls-cert, --tls-key and --tls-ca, or none")

    @property
    def enabled(self) -> bool:
        return self.cert is not None

    def _read(self) -> tuple[bytes, bytes, bytes]:
        assert self.cert is not None and self.key is not None and self.ca is not None
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve with our certificate; require a client certificate signed by the CA."""
        cert, key, ca = self._read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Present our certificate; accept a server whose certificate chains to the CA."""
        cert, key, ca = self._read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
