"""``serve()``: the whole receiver process, from model and fuser directories to a server."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from c2c.grpc_server import RunningServer, start_grpc_server
from c2c.model_loading import load_causal_lm
from c2c.service_config import TlsFiles
from c2c.telemetry import setup_telemetry, start_prometheus_endpoint
from fuser.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint
from fuser.graph_runner import DEFAULT_BUCKETS
from protos import c2c_pb2
from receiver_service.pipeline import ReceiverPipeline, ReceiverSettings
from receiver_service.request_validation import RequestLimits
from receiver_service.servicer import ReceiverServicer, add_receiver_servicer
from receiver_service.sharer_client import SharerClient

_logger = logging.getLogger(__name__)


@dataclass
class ReceiverServer:
    """A running receiver: the gRPC server and the pipeline behind it."""

    running: RunningServer
    pipeline: ReceiverPipeline

    @property
    def port(self) -> int:
        return self.running.port

    def stop(self, grace_s: float = 5.0) -> None:
        self.running.stop(grace_s)
        if self.pipeline.sharer is not None:
            self.pipeline.sharer.close()


def fuser_fingerprint(checkpoint: Path) -> str:
    """Hash of the checkpoint's config and weights, as ReceiverCard reports it."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update((checkpoint / name).read_bytes())
    return digest.hexdigest()[:32]


def serve(
    model: Path,
    fuser: Path,
    sharer: str,
    *,
    host: str = "0.0.0.0",
    port: int = 50052,
    dtype: str = "float32",
    device: str = "cpu",
    max_prompt_tokens: int = 2048,
    max_new_tokens: int = 512,
    default_new_tokens: int = 128,
    default_codec: int = c2c_pb2.CODEC_FP16,
    sharer_timeout: float = 30.0,
    text_hint_tokens: int = 64,
    max_message_bytes: int = 1 << 20,
    graph_buckets: tuple[int, ...] = DEFAULT_BUCKETS,
    workers: int = 16,
    metrics_port: int = 0,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_ca: Path | None = None,
    sharer_lb_policy: str = "pick_first",
    wait: bool = True,
) -> ReceiverServer:
    """Load model and fuser, check the sharer, start the server, and (``wait``) serve until
    SIGTERM/SIGINT. A sharer that is unreachable or not the fuser's leaves c2c unready (logged,
    reported by Describe); receiver_only and text requests are served regardless. The TLS files
    secure the channel to the sharer (mutual TLS); ``sharer_lb_policy`` is its gRPC load-balancing
    policy (``round_robin`` across the addresses of a headless Service)."""
    tls = TlsFiles(tls_cert, tls_key, tls_ca)
    loaded = load_causal_lm(model, dtype, device)
    setup_telemetry("c2c-receiver", model_name=loaded.card.name)
    if metrics_port:
        start_prometheus_endpoint(metrics_port, host)
    c2c_fuser = load_checkpoint(fuser, receiver=loaded.card, device=device)
    settings = ReceiverSettings(
        limits=RequestLimits(
            max_new_tokens=max_new_tokens,
            default_new_tokens=min(default_new_tokens, max_new_tokens),
            max_prompt_tokens=max_prompt_tokens,
            default_codec=default_codec,
        ),
        sharer_timeout_s=sharer_timeout,
        text_hint_tokens=text_hint_tokens,
        max_message_bytes=max_message_bytes,
        graph_buckets=graph_buckets,
    )
    sharer_client = SharerClient(
        sharer,
        credentials=tls.channel_credentials() if tls.enabled else None,
        lb_policy=sharer_lb_policy,
    )
    pipeline = ReceiverPipeline(
        loaded, c2c_fuser, fuser_fingerprint(fuser), sharer_client, settings
    )
    readiness = pipeline.check_sharer()
    if readiness.ready:
        _logger.info("c2c ready: sharer %s is the fuser's sharer", sharer)
    else:
        _logger.warning("c2c NOT ready (receiver_only and text still served): %s", readiness.reason)
    servicer = ReceiverServicer(pipeline)
    running = start_grpc_server(
        [lambda server: add_receiver_servicer(servicer, server)],
        host=host,
        port=port,
        max_workers=workers,
    )
    _logger.info(
        "c2c-receiver serving %s with fuser %s on %s:%d (sharer %s)",
        loaded.card.name,
        fuser,
        host,
        running.port,
        sharer,
    )
    receiver = ReceiverServer(running=running, pipeline=pipeline)
    if wait:
        running.wait_for_signal()
    return receiver
