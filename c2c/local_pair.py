"""Both services of a model pair as separate processes on free 127.0.0.1 ports.

What ``c2c eval`` (without ``--receiver``) and ``c2c demo`` run against: the real ``c2c-sharer``
and ``c2c-receiver`` servers, each in its own process as on two machines, reached through real
channels, and stopped with SIGTERM so they drain and flush their traces.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from c2c.telemetry import TRACES_FILE_ENV

STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0


class PairStartError(RuntimeError):
    """A service process exited or did not become healthy; the message ends with its log."""


@dataclass(frozen=True)
class PairPaths:
    """The three directories a C2C pair is made of."""

    receiver: Path
    sharer: Path
    fuser: Path


# The pair's directories as command options, shared by demo, eval and the benchmarks.
ReceiverModelOption = Annotated[
    Path | None, typer.Option(help="Receiver model directory (default: bundled).")
]
SharerModelOption = Annotated[
    Path | None, typer.Option(help="Sharer model directory (default: bundled).")
]
FuserOption = Annotated[
    Path | None, typer.Option(help="Fuser checkpoint directory (default: bundled).")
]


@dataclass(frozen=True)
class PairAddresses:
    """Where the started services listen, and the trace files they write (if asked to)."""

    receiver: str
    sharer: str
    trace_files: tuple[Path, ...] = ()


def pair_paths(receiver: Path | None, sharer: Path | None, fuser: Path | None) -> PairPaths:
    """The given directories, the shipped pair's for those not given (FileNotFoundError naming
    what is missing when the bundled pair is needed but not installed)."""
    if None in (receiver, sharer, fuser):
        from c2c.bundled import bundled_pair

        pair = bundled_pair()
        receiver, sharer, fuser = (
            receiver or pair.receiver,
            sharer or pair.sharer,
            fuser or pair.fuser,
        )
    return PairPaths(receiver=receiver, sharer=sharer, fuser=fuser)


def bundled_questions() -> Path:
    """The shipped evaluation questions (JSONL)."""
    from c2c.bundled import bundled_pair

    return bundled_pair().eval_questions


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on, never one this process handed out before.

    The kernel picks a closed port at random and may offer the same one twice in a row; two
    children told the same port would have one fail to bind while the other answered its health
    check, and requests meant for one would reach the other.
    """
    with _handed_out_lock:
        while True:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port


@dataclass
class ServiceProcess:
    """A service's CLI running as a child process; its log goes to a temporary file (a pipe
    nobody reads would stall a chatty child)."""

    name: str
    port: int
    process: subprocess.Popen
    log: IO[str]

    def log_tail(self, chars: int = 800) -> str:
        self.log.seek(0)
        return self.log.read()[-chars:]

    def wait_serving(self, timeout_s: float) -> None:
        """Return once its gRPC health service says SERVING; raise if the child died."""
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise PairStartError(
                        f"{self.name} on port {self.port} exited with {self.process.returncode}:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise PairStartError(f"{self.name} on port {self.port} not serving after {timeout_s:.0f}s")

    def stop(self) -> None:
        """SIGTERM (the services drain and flush their telemetry on it), then SIGKILL."""
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def spawn_service(module: str, args: list[str], env: dict[str, str]) -> ServiceProcess:
    """Run a service's CLI (``sharer_service.cli`` or ``receiver_service.cli``) on 127.0.0.1
    and a free port, as a child with ``env``."""
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-c", f"from {module} import main; main()", *args]
        + ["--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return ServiceProcess(name=module.split(".")[0], port=port, process=process, log=log)


def stop_services(services: list[ServiceProcess]) -> None:
    """Signal every service first, then wait for each: they flush their telemetry in parallel."""
    for service in services:
        service.process.terminate()
    for service in reversed(services):
        service.stop()


@contextmanager
def local_pair(
    paths: PairPaths, trace_dir: Path | None = None, text_hint_tokens: int = 64
) -> Iterator[PairAddresses]:
    """Start the sharer, then the receiver pointed at it; SIGTERM both (receiver first) on exit.

    With ``trace_dir`` each service writes its spans as OTLP-JSON lines into its own file there.
    """
    for name in ("receiver", "sharer", "fuser"):
        if not Path(getattr(paths, name)).is_dir():
            raise FileNotFoundError(f"{name} directory {getattr(paths, name)} does not exist")
    trace_files: list[Path] = []

    def environment(name: str) -> dict[str, str]:
        env = {**os.environ, "C2C_LOG_LEVEL": "warning", "OTEL_METRICS_EXPORTER": "none"}
        if trace_dir is None:
            env["OTEL_TRACES_EXPORTER"] = "none"
            return env
        trace_file = trace_dir / f"{name}.otlp.jsonl"
        trace_file.unlink(missing_ok=True)
        trace_files.append(trace_file)
        env.update({"OTEL_TRACES_EXPORTER": "otlp_json_file", TRACES_FILE_ENV: str(trace_file)})
        return env

    started: list[ServiceProcess] = []
    try:
        sharer = spawn_service(
            "sharer_service.cli", ["--model", str(paths.sharer)], environment("c2c-sharer")
        )
        started.append(sharer)
        sharer.wait_serving(STARTUP_TIMEOUT_S)
        receiver = spawn_service(
            "receiver_service.cli",
            [
                "--model", str(paths.receiver),
                "--fuser", str(paths.fuser),
                "--sharer", f"127.0.0.1:{sharer.port}",
                "--text-hint-tokens", str(text_hint_tokens),
            ],
            environment("c2c-receiver"),
        )  # fmt: skip
        started.append(receiver)
        receiver.wait_serving(STARTUP_TIMEOUT_S)
        yield PairAddresses(
            receiver=f"127.0.0.1:{receiver.port}",
            sharer=f"127.0.0.1:{sharer.port}",
            trace_files=tuple(trace_files),
        )
    finally:
        stop_services(started)
