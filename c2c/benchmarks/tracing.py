"""`c2c bench tracing`: what tracing costs a request, measured side by side.

Two complete deployments run at once on this machine, each a real sharer and receiver process:
one exports every span over OTLP/gRPC (batch processor, as in production) to a span sink in this
process, the other runs with the OpenTelemetry SDK disabled. The same requests alternate between
them (on/off, then off/on), so drift in machine load hits both arms alike; the result is the ratio
of median end-to-end latencies seen by a client. Each round (``rounds``) starts fresh deployments,
all four services at once, the other arm first, so neither arm always gets the first-started
processes. The services get no ``OTEL_*`` settings beyond the exporter's, so the batch processor
runs on the SDK's defaults (an export every 5 s, at most 512 spans a batch). Load from other
processes swamps the difference being measured, so the result carries the machine's load average
from before the bench started anything.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import grpc
import typer
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from c2c.local_pair import (
    FuserOption,
    ReceiverModelOption,
    ServiceProcess,
    SharerModelOption,
    pair_paths,
    spawn_service,
    stop_services,
)
from protos import c2c_pb2, c2c_pb2_grpc

TARGET_MEDIAN_RATIO = 1.03
# A prompt the bundled receiver answers at length (a question it can answer in one word makes it
# stop after one token, and the bench would time a far shorter request than it says).
DEFAULT_PROMPT = "Tell me about the people of the town."


@dataclass
class TracingBenchConfig:
    """What to serve and how many requests to time per arm."""

    receiver_model: Path
    sharer_model: Path
    fuser: Path
    requests: int = 50
    warmup: int = 5
    max_new_tokens: int = 16
    prompt: str = DEFAULT_PROMPT
    startup_timeout_s: float = 300.0
    # Idle time before each request, so that what a deployment does after its reply (building the
    # request's leaf spans, see c2c.deferred_spans) runs before the other arm's request and not
    # during it, which would slow the untraced arm and flatter the ratio.
    gap_ms: float = 10.0
    # Fresh deployments per round, started in the other order each time: A/A runs (both arms
    # untraced, 100 requests) read ratios from 0.98 to 1.06, so no one pair of deployments
    # decides the figure. A round costs about 15 s of start-up on a 2-core machine.
    rounds: int = 4
    # One intra-op thread per service: four services on a small CPU machine otherwise fight over
    # cores, and that noise dwarfs what tracing costs. Both arms get the same.
    torch_threads: int = 1


@dataclass
class ArmResult:
    """One deployment's latencies, in milliseconds, as the client measured them."""

    tracing: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    spans_exported: int
    latencies_ms: list[float] = field(repr=False)


@dataclass
class TracingBenchResult:
    compared: str
    requests: int
    mode: str
    max_new_tokens: int
    gap_ms: float
    rounds: int
    # Tokens the replies actually carried (the median): fewer than max_new_tokens means the
    # model stopped early and each request was shorter than asked.
    new_tokens_median: float
    torch_threads_per_service: str
    tracing_on: ArmResult
    tracing_off: ArmResult
    median_ratio: float
    # Each on/off pair ran back to back, which cancels slow load drift; see paired_median_ratio.
    median_paired_ratio: float
    # 95% bootstrap interval of median_paired_ratio (pairs resampled).
    median_paired_ratio_ci95: tuple[float, float]
    # 95% bootstrap interval of median_ratio (requests resampled): how far noise alone moves it.
    median_ratio_ci95: tuple[float, float]
    target_median_ratio: float
    meets_target: bool
    # 1-minute load average before the bench started its services: other processes' load.
    load_average_at_start: float


class SpanSink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace endpoint that counts spans per service and keeps nothing else."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans_by_service: dict[str, int] = {}

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        kv.value.string_value
                        for kv in resource_spans.resource.attributes
                        if kv.key == "service.name"
                    ),
                    "",
                )
                count = sum(len(scope.spans) for scope in resource_spans.scope_spans)
                self.spans_by_service[service] = self.spans_by_service.get(service, 0) + count
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans_from(self, prefix: str) -> int:
        with self._lock:
            return sum(n for name, n in self.spans_by_service.items() if name.startswith(prefix))


@contextmanager
def running_span_sink() -> Iterator[tuple[SpanSink, int]]:
    sink = SpanSink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield sink, port
    finally:
        server.stop(grace=None)


def otel_free_env(**otel: str) -> dict[str, str]:
    """This process's environment without OTEL_* settings, plus ``otel``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(otel)
    return env


@contextmanager
def deployments(
    config: TracingBenchConfig, arms: dict[str, tuple[str, dict[str, str]]]
) -> Iterator[dict[str, int]]:
    """For each arm (name and ``OTEL_*`` settings), a sharer and a receiver on 127.0.0.1, all
    started at once in the arms' order (a receiver checks its sharer again when it first needs
    it); yields each arm's receiver port and stops every service on exit."""
    started: list[ServiceProcess] = []
    receivers: dict[str, ServiceProcess] = {}
    try:
        for arm, (name, otel) in arms.items():
            env = otel_free_env(**otel)
            env.setdefault("OMP_NUM_THREADS", str(config.torch_threads))
            sharer = spawn_service(
                "sharer_service.cli",
                ["--model", str(config.sharer_model)],
                {**env, "OTEL_SERVICE_NAME": f"{name}-sharer"},
            )
            started.append(sharer)
            receivers[arm] = spawn_service(
                "receiver_service.cli",
                ["--model", str(config.receiver_model), "--fuser", str(config.fuser)]
                + ["--sharer", f"127.0.0.1:{sharer.port}"],
                {**env, "OTEL_SERVICE_NAME": f"{name}-receiver"},
            )
            started.append(receivers[arm])
        for service in started:
            service.wait_serving(config.startup_timeout_s)
        yield {arm: receiver.port for arm, receiver in receivers.items()}
    finally:
        stop_services(started)


def _timed_generate(
    stub: c2c_pb2_grpc.ReceiverStub, request: c2c_pb2.GenerateRequest
) -> tuple[float, int]:
    """Latency in milliseconds and the number of tokens generated."""
    start = time.perf_counter()
    reply = stub.Generate(request, timeout=120)
    return (time.perf_counter() - start) * 1e3, len(reply.token_ids)


def _arm(tracing: str, latencies: list[float], spans: int) -> ArmResult:
    deciles = statistics.quantiles(latencies, n=10)
    return ArmResult(
        tracing=tracing,
        median_ms=statistics.median(latencies),
        p10_ms=deciles[0],
        p90_ms=deciles[-1],
        mean_ms=statistics.fmean(latencies),
        spans_exported=spans,
        latencies_ms=latencies,
    )


def median_ratio_interval(
    on: list[float], off: list[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% bootstrap interval of ``median(on) / median(off)``; each arm is resampled on its own."""
    return _bootstrap_interval(
        lambda rng: (
            statistics.median(rng.choices(on, k=len(on)))
            / statistics.median(rng.choices(off, k=len(off)))
        ),
        resamples,
        seed,
    )


def _bootstrap_interval(
    resampled_statistic: Callable[[random.Random], float], resamples: int, seed: int
) -> tuple[float, float]:
    """The central 95% of ``resamples`` draws of ``resampled_statistic``."""
    rng = random.Random(seed)
    draws = sorted(resampled_statistic(rng) for _ in range(resamples))
    return draws[int(0.025 * resamples)], draws[int(0.975 * resamples) - 1]


def paired_median_ratio(on: list[float], off: list[float]) -> float:
    """The typical on/off ratio within back-to-back pairs, pair ``i`` having run "on" first for
    even ``i``: the geometric mean of the median log-ratio of each order.

    The request in a pair that follows one to its own deployment runs on warmer caches (measured
    here: about 3% faster), so each order alone is biased and the orders alternate to cancel it.
    """
    on_first, off_first = _pair_log_ratios(on, off)
    return _balanced_ratio(on_first, off_first)


def paired_median_ratio_interval(
    on: list[float], off: list[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% bootstrap interval of ``paired_median_ratio``; pairs resampled within each order."""
    on_first, off_first = _pair_log_ratios(on, off)
    return _bootstrap_interval(
        lambda rng: _balanced_ratio(
            rng.choices(on_first, k=len(on_first)), rng.choices(off_first, k=len(off_first))
        ),
        resamples,
        seed,
    )


def _pair_log_ratios(on: list[float], off: list[float]) -> tuple[list[float], list[float]]:
    """log(on/off) of the pairs that ran "on" first (even) and of those that ran it second."""
    log_ratios = [math.log(a / b) for a, b in zip(on, off, strict=True)]
    return log_ratios[0::2], log_ratios[1::2]


def _balanced_ratio(on_first: list[float], off_first: list[float]) -> float:
    return math.exp((statistics.median(on_first) + statistics.median(off_first)) / 2)


def run_tracing_bench(config: TracingBenchConfig) -> TracingBenchResult:
    """Start both deployments, alternate ``config.requests`` C2C requests between them."""
    request = c2c_pb2.GenerateRequest(
        prompt=config.prompt, max_new_tokens=config.max_new_tokens, mode=c2c_pb2.MODE_C2C
    )
    load_at_start = os.getloadavg()[0]
    latencies: dict[str, list[float]] = {"on": [], "off": []}
    new_tokens: list[int] = []
    pair_index = 0
    with running_span_sink() as (sink, sink_port):
        arms = {
            "on": (
                "traced",
                {
                    "OTEL_TRACES_EXPORTER": "otlp",
                    "OTEL_METRICS_EXPORTER": "none",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
                },
            ),
            "off": ("untraced", {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "none"}),
        }
        for round_index in range(config.rounds):
            # The deployment started first ran about 1% slower in A/A runs: alternate it.
            start_order = ("on", "off") if round_index % 2 == 0 else ("off", "on")
            pairs = config.requests // config.rounds
            pairs += 1 if round_index < config.requests % config.rounds else 0
            with ExitStack() as stack:
                ports = stack.enter_context(
                    deployments(config, {arm: arms[arm] for arm in start_order})
                )
                stubs = {
                    arm: c2c_pb2_grpc.ReceiverStub(
                        stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}"))
                    )
                    for arm, port in ports.items()
                }
                for _ in range(config.warmup):
                    for stub in stubs.values():
                        _timed_generate(stub, request)
                for _ in range(pairs):
                    order = ("on", "off") if pair_index % 2 == 0 else ("off", "on")
                    pair_index += 1
                    for arm in order:
                        time.sleep(config.gap_ms / 1e3)
                        latency, tokens = _timed_generate(stubs[arm], request)
                        latencies[arm].append(latency)
                        new_tokens.append(tokens)
            # The batch processor exports every 5 s by default; stopping the services flushes it.
    on = _arm("otlp/grpc, batch processor", latencies["on"], sink.spans_from("traced"))
    off = _arm("OTEL_SDK_DISABLED=true", latencies["off"], sink.spans_from("untraced"))
    ratio = on.median_ms / off.median_ms
    return TracingBenchResult(
        compared=(
            "end-to-end Generate latency from a client: sharer+receiver exporting spans over OTLP "
            "to a local sink vs the same pair with the OpenTelemetry SDK disabled, "
            "requests alternating between them, each after gap_ms idle; fresh deployments "
            "each round, started in the other order"
        ),
        requests=config.requests,
        mode="c2c",
        max_new_tokens=config.max_new_tokens,
        gap_ms=config.gap_ms,
        rounds=config.rounds,
        new_tokens_median=statistics.median(new_tokens),
        torch_threads_per_service=os.environ.get("OMP_NUM_THREADS", str(config.torch_threads)),
        tracing_on=on,
        tracing_off=off,
        median_ratio=ratio,
        median_paired_ratio=paired_median_ratio(on.latencies_ms, off.latencies_ms),
        median_paired_ratio_ci95=paired_median_ratio_interval(on.latencies_ms, off.latencies_ms),
        median_ratio_ci95=median_ratio_interval(on.latencies_ms, off.latencies_ms),
        target_median_ratio=TARGET_MEDIAN_RATIO,
        meets_target=ratio <= TARGET_MEDIAN_RATIO,
        load_average_at_start=load_at_start,
    )


def tracing_command(
    receiver_model: ReceiverModelOption = None,
    sharer_model: SharerModelOption = None,
    fuser: FuserOption = None,
    requests: Annotated[int, typer.Option(min=2, help="Timed requests per arm.")] = 50,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed requests per arm first.")] = 5,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per request.")] = 16,
    gap_ms: Annotated[
        float, typer.Option(min=0, help="Idle milliseconds before each timed request.")
    ] = 10.0,
    rounds: Annotated[
        int, typer.Option(min=1, help="Fresh deployments this many times, start order swapped.")
    ] = 4,
    torch_threads: Annotated[
        int, typer.Option(min=1, help="OMP_NUM_THREADS of each service (unless already set).")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON result here.")] = None,
) -> None:
    """Tracing on (OTLP, batch) vs off: median end-to-end latency ratio over the same requests."""
    try:
        paths = pair_paths(receiver_model, sharer_model, fuser)
    except FileNotFoundError as error:
        typer.echo(f"error: {error}; pass --receiver-model, --sharer-model and --fuser", err=True)
        raise typer.Exit(2) from None
    config = TracingBenchConfig(
        receiver_model=paths.receiver,
        sharer_model=paths.sharer,
        fuser=paths.fuser,
        requests=requests,
        warmup=warmup,
        max_new_tokens=max_new_tokens,
        gap_ms=gap_ms,
        rounds=rounds,
        torch_threads=torch_threads,
    )
    if not as_json:
        typer.echo(
            f"tracing bench: {requests} requests per arm, models from {paths.receiver.parent}"
        )
    try:
        result = run_tracing_bench(config)
    except RuntimeError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    except grpc.RpcError as error:
        typer.echo(f"error: Generate failed: {error.code().name}: {error.details()}", err=True)
        raise typer.Exit(1) from None
    document = json.dumps(asdict(result), indent=2)
    if out is not None:
        out.write_text(document + "\n")
    typer.echo(document)
