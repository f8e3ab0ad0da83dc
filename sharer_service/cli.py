"""``c2c-sharer``: every option maps onto one ``serve()`` argument and reads ``C2C_<NAME>``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from c2c.errors import C2CError
from c2c.service_config import (
    CodecChoice,
    DTypeChoice,
    configure_logging,
    model_or_bundled,
    resolve_device,
    resolve_dtype,
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
    host: Annotated[str, typer.Option(envvar="C2C_HOST", help="Address to bind.")] = "0.0.0.0",
    port: Annotated[
        int, typer.Option(envvar="C2C_PORT", help="Port to bind; 0 picks a free one.")
    ] = 50051,
    dtype: Annotated[
        DTypeChoice, typer.Option(envvar="C2C_DTYPE", help="Compute dtype.")
    ] = DTypeChoice.auto,
    device: Annotated[
        str,
        typer.Option(
            envvar="C2C_DEVICE", help="torch device; auto = cuda when available, else cpu."
        ),
    ] = "auto",
    max_prompt_tokens: Annotated[
        int,
        typer.Option(
            envvar="C2C_MAX_PROMPT_TOKENS", help="Longest prompt accepted, in sharer tokens."
        ),
    ] = 2048,
    max_new_tokens: Annotated[
        int, typer.Option(envvar="C2C_MAX_NEW_TOKENS", help="Most tokens GenerateText may ask for.")
    ] = 512,
    default_codec: Annotated[
        CodecChoice,
        typer.Option(envvar="C2C_DEFAULT_CODEC", help="KV layout when a request says none."),
    ] = CodecChoice.fp16,
    max_message_bytes: Annotated[
        int,
        typer.Option(
            envvar="C2C_MAX_MESSAGE_BYTES", help="Prefill message size bound when unasked."
        ),
    ] = 1 << 20,
    workers: Annotated[int, typer.Option(envvar="C2C_WORKERS", help="Concurrent RPCs.")] = 16,
    metrics_port: Annotated[
        int,
        typer.Option(
            envvar="C2C_METRICS_PORT", help="Serve Prometheus /metrics on this port (0: off)."
        ),
    ] = 0,
    tls_cert: Annotated[
        Path | None,
        typer.Option(envvar="C2C_TLS_CERT", help="PEM certificate; with key and CA: mutual TLS."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="C2C_TLS_KEY", help="PEM private key of --tls-cert.")
    ] = None,
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
    log_level: Annotated[
        str, typer.Option(envvar="C2C_LOG_LEVEL", help="Python log level.")
    ] = "info",
) -> None:
    """Serve a sharer model: Describe, Prefill (KV stream) and GenerateText over gRPC."""
    from sharer_service.server import serve

    configure_logging(log_level)
    device = resolve_device(device)
    try:
        serve(
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
    except (C2CError, OSError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    app()
