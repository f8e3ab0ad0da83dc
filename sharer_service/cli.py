"""``c2c-sharer``: every option maps onto one ``serve()`` argument and reads ``C2C_<NAME>``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from c2c.service_config import (
    CodecChoice,
    DefaultCodecOption,
    DeviceOption,
    DTypeChoice,
    DTypeOption,
    HostOption,
    LogLevelOption,
    MetricsPortOption,
    PortOption,
    TlsKeyOption,
    WorkersOption,
    configure_logging,
    model_or_bundled,
    resolve_device,
    resolve_dtype,
    run_server,
)

app = typer.Typer(add_completion=False)


@app.command()
def sharer(
    model: Annotated[
        Path | None,
        typer.Option(
            envvar="C2C_MODEL", help="Local Hugging Face model directory (default: bundled)."
        ),
    ] = None,
    host: HostOption = "0.0.0.0",
    port: PortOption = 50051,
    dtype: DTypeOption = DTypeChoice.auto,
    device: DeviceOption = "auto",
    max_prompt_tokens: Annotated[
        int,
        typer.Option(
            envvar="C2C_MAX_PROMPT_TOKENS", help="Longest prompt accepted, in sharer tokens."
        ),
    ] = 2048,
    max_new_tokens: Annotated[
        int, typer.Option(envvar="C2C_MAX_NEW_TOKENS", help="Most tokens GenerateText may ask for.")
    ] = 512,
    default_codec: DefaultCodecOption = CodecChoice.fp16,
    max_message_bytes: Annotated[
        int,
        typer.Option(
            envvar="C2C_MAX_MESSAGE_BYTES", help="Prefill message size bound when unasked."
        ),
    ] = 1 << 20,
    workers: WorkersOption = 16,
    metrics_port: MetricsPortOption = 0,
    tls_cert: Annotated[
        Path | None,
        typer.Option(envvar="C2C_TLS_CERT", help="PEM certificate; with key and CA: mutual TLS."),
    ] = None,
    tls_key: TlsKeyOption = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(envvar="C2C_TLS_CA", help="PEM CA that must sign client certificates."),
    ] = None,
    health_port: Annotated[
        int | None,
        typer.Option(
            envvar="C2C_HEALTH_PORT", help="Also serve health alone, in plaintext, on this port."
        ),
    ] = None,
    log_level: LogLevelOption = "info",
) -> None:
    """Serve a sharer model: Describe, Prefill (KV stream) and GenerateText over gRPC."""
    from sharer_service.server import serve

    configure_logging(log_level)
    device = resolve_device(device)
    run_server(
        lambda: serve(
            model_or_bundled(model, "sharer", "--model"),
            host=host,
            port=port,
            dtype=resolve_dtype(dtype, device),
            device=device,
            max_prompt_tokens=max_prompt_tokens,
            max_new_tokens=max_new_tokens,
            default_codec=default_codec.wire,
            max_message_bytes=max_message_bytes,
            workers=workers,
            metrics_port=metrics_port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_ca=tls_ca,
            health_port=health_port,
        )
    )


def main() -> None:
    app()
