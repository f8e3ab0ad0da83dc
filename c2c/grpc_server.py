"""What both services' ``serve()`` share: a gRPC server with our interceptors, the standard health
and reflection services, a bound port, and a graceful stop on SIGTERM/SIGINT.

Each service's ``server.py`` builds its domain object and servicer and hands them to
``start_grpc_server``; reading that ``serve()`` still tells the whole process.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from c2c.grpc_errors import ErrorStatusInterceptor
from c2c.telemetry import active_telemetry, grpc_server_interceptor

_logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class RunningServer:
    """A started server: its bound port, its health servicer, and how to stop it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]
    health_server: grpc.Server | None = None
    health_port: int = 0

    def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish for ``grace_s``, then stop."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()

    def wait_for_signal(self, grace_s: float = 5.0) -> None:
        """Freeze what start-up loaded out of the garbage collector's reach, block until SIGTERM
        or SIGINT, then stop gracefully and flush telemetry."""
        # What start-up loaded (torch, transformers, the models: ~400k objects) lives as long as
        # the process; a full collection would walk all of it (170 ms on the bundled receiver)
        # in the middle of some request. Frozen, full collections only see requests' garbage.
        gc.collect()
        gc.freeze()
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
        _logger.info("signal received: stopping (grace %.1fs)", grace_s)
        self.stop(grace_s)
        telemetry = active_telemetry()
        if telemetry is not None:
            telemetry.shutdown()


def start_grpc_server(
    add_services: list[Callable[[grpc.Server], str]],
    *,
    host: str,
    port: int,
    max_workers: int,
    max_message_bytes: int = 64 << 20,
    credentials: grpc.ServerCredentials | None = None,
    health_port: int | None = None,
) -> RunningServer:
    """Start a server with ``add_services`` (each registers one servicer and returns its full
    service name), health (overall and per service, all SERVING) and reflection.

    ``credentials`` secure the port; ``health_port`` (0: any free one) adds a plaintext port that
    serves only the health service (kubelet gRPC probes cannot present a client certificate).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[grpc_server_interceptor(), ErrorStatusInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A second server on a taken port must fail, not silently share its traffic.
            ("grpc.so_reuseport", 0),
        ],
    )
    names = tuple(add(server) for add in add_services)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", SERVING)
    for name in names:
        health_servicer.set(name, SERVING)
    reflection.enable_server_reflection(
        (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bound = _bind(server, f"{host}:{port}", credentials)
    health_server, bound_health_port = None, 0
    if health_port is not None:
        health_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)]
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        bound_health_port = _bind(health_server, f"{host}:{health_port}", None)
        health_server.start()
    server.start()
    return RunningServer(
        server=server,
        port=bound,
        health=health_servicer,
        service_names=names,
        health_server=health_server,
        health_port=bound_health_port,
    )


def _bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """The bound port, or OSError naming the address (gRPC raises RuntimeError or returns 0)."""
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot bind {address} (in use, or not an address of this host)")
    return bound
