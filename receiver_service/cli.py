"""``c2c-receiver``: every option maps onto one ``serve()`` argument and reads ``C2C_<NAME>``."""

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
from fuser.graph_runner import DEFAULT_BUCKETS


def parse_buckets(text: str) -> tuple[int, ...]:
    """`--graph-buckets 64,128,...` as positive lengths."""
    try:
        buckets = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated lengths, got {text!r}") from None
    if not buckets or min(buckets) < 1:
        raise typer.BadParameter(f"bucket lengths must be positive, got {text!r}")
    return buckets


app = typer.Typer(add_completion=False)


@app.command()
def receiver(
    model: Annotated[
        Path | None,
        typer.Option(envvar="C2C_MODEL", help="Receiver model directory (default: bundled)."),
    ] = None,
    fuser: Annotated[
        Path | None,
        typer.Option(
            envvar="C2C_FUSER", help="Fuser checkpoint (`c2c train --out`; default: bundled)."
        ),
    ] = None,
    sharer: Annotated[
        str, typer.Option(envvar="C2C_SHARER", help="Sharer service address, HOST:PORT.")
    ] = "localhost:50051",
    host: HostOption = "0.0.0.0",
    port: PortOption = 50052,
    dtype: DTypeOption = DTypeChoice.auto,
    device: DeviceOption = "auto",
    max_prompt_tokens: Annotated[
        int,
        typer.Option(
            envvar="C2C_MAX_PROMPT_TOKENS", help="Longest prompt accepted, in receiver tokens."
        ),
    ] = 2048,
    max_new_tokens: Annotated[
        int,
        typer.Option(envvar="C2C_MAX_NEW_TOKENS", help="Most tokens a request may ask for."),
    ] = 512,
    default_new_tokens: Annotated[
        int,
        typer.Option(
            envvar="C2C_DEFAULT_NEW_TOKENS", help="Tokens generated when a request says 0."
        ),
    ] = 128,
    default_codec: DefaultCodecOption = CodecChoice.fp16,
    sharer_timeout: Annotated[
        float,
        typer.Option(
            envvar="C2C_SHARER_TIMEOUT",
            help="Seconds to wait for the sharer per request (capped by the client's deadline).",
        ),
    ] = 30.0,
    text_hint_tokens: Annotated[
        int,
        typer.Option(envvar="C2C_TEXT_HINT_TOKENS", help="Tokens the sharer writes in text mode."),
    ] = 64,
    max_message_bytes: Annotated[
        int,
        typer.Option(
            envvar="C2C_MAX_MESSAGE_BYTES", help="Largest KV message asked of the sharer."
        ),
    ] = 1 << 20,
    graph_buckets: Annotated[
        str,
        typer.Option(
            envvar="C2C_GRAPH_BUCKETS",
            callback=parse_buckets,
            help="Prompt-length buckets whose fusion is captured as CUDA graphs at start-up "
            "(GPU only; longer prompts fuse eagerly), comma-separated.",
        ),
    ] = ",".join(str(bucket) for bucket in DEFAULT_BUCKETS),
    workers: WorkersOption = 16,
    metrics_port: MetricsPortOption = 0,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="C2C_TLS_CERT", help="PEM certificate shown to the sharer (mutual TLS)."
        ),
    ] = None,
    tls_key: TlsKeyOption = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(envvar="C2C_TLS_CA", help="PEM CA the sharer's certificate must chain to."),
    ] = None,
    sharer_lb_policy: Annotated[
        str,
        typer.Option(
            envvar="C2C_SHARER_LB_POLICY",
            help="gRPC load balancing over the sharer's addresses: pick_first or round_robin.",
        ),
    ] = "pick_first",
    log_level: LogLevelOption = "info",
) -> None:
    """Serve a receiver model with its fuser: Generate / GenerateStream in c2c, receiver_only
    and text modes. c2c stays unavailable (Describe says why) while the sharer is unreachable
    or is not the model the fuser was trained for; the other modes are served regardless."""
    from receiver_service.server import serve

    configure_logging(log_level)
    device = resolve_device(device)
    run_server(
        lambda: serve(
            model_or_bundled(model, "receiver", "--model"),
            model_or_bundled(fuser, "fuser", "--fuser"),
            sharer,
            host=host,
            port=port,
            dtype=resolve_dtype(dtype, device),
            device=device,
            max_prompt_tokens=max_prompt_tokens,
            max_new_tokens=max_new_tokens,
            default_new_tokens=default_new_tokens,
            default_codec=default_codec.wire,
            sharer_timeout=sharer_timeout,
            text_hint_tokens=text_hint_tokens,
            max_message_bytes=max_message_bytes,
            graph_buckets=graph_buckets,
            workers=workers,
            metrics_port=metrics_port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_ca=tls_ca,
            sharer_lb_policy=sharer_lb_policy,
        )
    )


def main() -> None:
    app()
