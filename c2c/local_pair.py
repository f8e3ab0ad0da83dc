"""Both services of a model pair as separate processes on free 127.0.0.1 ports.

What ``c2c eval`` (without ``--receiver``) and ``c2c demo`` run against: the real ``c2c-sharer``
and ``c2c-receiver`` servers, each in its own process as on two machines, reached through real
channels, and stopped with SIGTERM so they drain and flush their traces.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _console_script(name: str) -> list[str]:
    """Run a console script of this installation with this interpreter."""
    module = {"c2c-sharer": "sharer_service.cli", "c2c-receiver": "receiver_service.cli"}[name]
    return [sys.executable, "-c", f"import {module} as m; m.main()"]


def _wait_healthy(process: subprocess.Popen, address: str, log: Path, name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log.read_text()[-1500:]
                raise PairStartError(f"{name} exited with {process.returncode}:\n{tail}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise PairStartError(f"{name} not healthy at {address} after {STARTUP_TIMEOUT_S:.0f}s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
    logs = Path(tempfile.mkdtemp(prefix="c2c-pair-"))
    sharer_port, receiver_port = free_port(), free_port()
    trace_files: list[Path] = []
    processes: list[subprocess.Popen] = []

    def start(name: str, argv: list[str], port: int) -> None:
        env = {**os.environ, "C2C_LOG_LEVEL": "warning", "OTEL_METRICS_EXPORTER": "none"}
        if trace_dir is not None:
            trace_file = trace_dir / f"{name}.otlp.jsonl"
            trace_file.unlink(missing_ok=True)
            trace_files.append(trace_file)
            env.update({"OTEL_TRACES_EXPORTER": "otlp_json_file", TRACES_FILE_ENV: str(trace_file)})
        else:
            env["OTEL_TRACES_EXPORTER"] = "none"
        log = logs / f"{name}.log"
        with log.open("w") as log_file:
            process = subprocess.Popen(
                _console_script(name) + argv + ["--host", "127.0.0.1", "--port", str(port)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        processes.append(process)
        _wait_healthy(process, f"127.0.0.1:{port}", log, name)

    try:
        start("c2c-sharer", ["--model", str(paths.sharer)], sharer_port)
        start(
            "c2c-receiver",
            [
                "--model", str(paths.receiver),
                "--fuser", str(paths.fuser),
                "--sharer", f"127.0.0.1:{sharer_port}",
                "--text-hint-tokens", str(text_hint_tokens),
            ],
            receiver_port,
        )  # fmt: skip
        yield PairAddresses(
            receiver=f"127.0.0.1:{receiver_port}",
            sharer=f"127.0.0.1:{sharer_port}",
            trace_files=tuple(trace_files),
        )
    finally:
        for process in reversed(processes):
            _stop(process)
