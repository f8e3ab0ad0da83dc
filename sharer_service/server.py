"""``serve()``: the whole sharer process, from model directory to a server answering Prefill."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from c2c.grpc_server import RunningServer, start_grpc_server
from c2c.model_loading import load_causal_lm
from c2c.service_config import TlsFiles
from c2c.telemetry import setup_telemetry, start_prometheus_endpoint
from protos import c2c_pb2, c2c_pb2_grpc
from sharer_service.prefill import SharerLimits, SharerPrefill
from sharer_service.servicer import SharerServicer

_logger = logging.getLogger(__name__)

SERVICE_NAME = c2c_pb2.DESCRIPTOR.services_by_name["Sharer"].full_name


@dataclass
class SharerServer:
    """A running sharer: the gRPC server and the domain object behind it."""

    running: RunningServer
    prefill: SharerPrefill

    @property
    def port(self) -> int:
        return self.running.port

    def stop(self, grace_s: float = 5.0) -> None:
        self.running.stop(grace_s)


def serve(
    model: Path,
    *,
    host: str = "0.0.0.0",
    port: int = 50051,
    dtype: str = "float32",
    device: str = "cpu",
    max_prompt_tokens: int = 2048,
    max_new_tokens: int = 512,
    default_codec: int = c2c_pb2.CODEC_FP16,
    max_message_bytes: int = 1 << 20,
    workers: int = 16,
    metrics_port: int = 0,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_ca: Path | None = None,
    health_port: int | None = None,
    wait: bool = True,
) -> SharerServer:
    """Load the model, start the server, and (``wait``) serve until SIGTERM/SIGINT.

    With the three TLS files the port requires a client certificate signed by ``tls_ca``;
    ``health_port`` then serves the health service alone, in plaintext, for probes.
    """
    tls = TlsFiles(tls_cert, tls_key, tls_ca)
    loaded = load_causal_lm(model, dtype, device)
    setup_telemetry("c2c-sharer", model_name=loaded.card.name)
    if metrics_port:
        start_prometheus_endpoint(metrics_port, host)
    limits = SharerLimits(
        max_prompt_tokens=max_prompt_tokens,
        max_new_tokens=max_new_tokens,
        max_message_bytes=max_message_bytes,
        default_codec=default_codec,
    )
    prefill = SharerPrefill(loaded, limits)
    servicer = SharerServicer(prefill)

    def add_sharer(server) -> str:
        c2c_pb2_grpc.add_SharerServicer_to_server(servicer, server)
        return SERVICE_NAME

    running = start_grpc_server(
        [add_sharer],
        host=host,
        port=port,
        max_workers=workers,
        credentials=tls.server_credentials() if tls.enabled else None,
        health_port=health_port,
    )
    _logger.info(
        "c2c-sharer serving %s (%s, %s on %s) on %s:%d%s%s",
        loaded.card.name,
        loaded.card.architecture,
        dtype,
        device,
        host,
        running.port,
        " with mutual TLS" if tls.enabled else "",
        f", health on {host}:{running.health_port}" if running.health_server else "",
    )
    sharer = SharerServer(running=running, prefill=prefill)
    if wait:
        running.wait_for_signal()
    return sharer
