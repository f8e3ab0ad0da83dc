"""One request is one trace across both services, as a collector receives it.

The services run as their real CLIs in child processes (telemetry is per process: each exports
under its own service name, configured only by OTEL_* variables) around the tiny model pair, and
export over OTLP/gRPC to a real receiver in this process. A third process, a receiver whose
sharer address has nothing behind it, gives the fallback and the error request.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from c2c.benchmarks.tracing import otel_free_env
from c2c.local_pair import ServiceProcess, free_port, spawn_service, stop_services
from protos import c2c_pb2, c2c_pb2_grpc
from tests.otlp_receiver import (
    SPAN_KIND_CLIENT,
    SPAN_KIND_SERVER,
    STATUS_ERROR,
    OtlpReceiver,
    ReceivedSpan,
    ancestors,
    running_otlp_receiver,
)
from tests.service_harness import save_random_fuser
from tests.tiny_models import TinyPair

PROMPT = "The red cat sleeps. Say the animal and its color:"
RECEIVER_SPANS = (
    "receiver.generate",
    "receiver.tokenize",
    "receiver.prefill",
    "network.transfer",
    "kv.decode",
    "fusion",
    "decoding",
)
SHARER_SPANS = ("sharer.prefill", "sharer.forward", "kv.encode")


@dataclass
class Services:
    collector: OtlpReceiver
    receiver: ServiceProcess
    orphan: ServiceProcess  # a receiver whose sharer is unreachable


@pytest.fixture(scope="module")
def services(tiny_pair_dirs: TinyPair, tmp_path_factory) -> Iterator[Services]:
    fuser = save_random_fuser(
        tiny_pair_dirs.receiver, tiny_pair_dirs.llama_sharer, tmp_path_factory.mktemp("fuser")
    )
    with running_otlp_receiver() as collector:
        env = otel_free_env(
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.grpc_endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_METRIC_EXPORT_INTERVAL="300",
        )
        receiver_args = ["--model", str(tiny_pair_dirs.receiver), "--fuser", str(fuser)]
        sharer = spawn_service(
            "sharer_service.cli", ["--model", str(tiny_pair_dirs.llama_sharer)], env
        )
        # All three start at once: a receiver whose sharer is not up yet checks it again at its
        # first c2c request.
        started = [
            sharer,
            spawn_service(
                "receiver_service.cli",
                [*receiver_args, "--sharer", f"127.0.0.1:{sharer.port}"],
                env,
            ),
            spawn_service(
                "receiver_service.cli",
                [*receiver_args, "--sharer", f"127.0.0.1:{free_port()}"],
                {**env, "OTEL_SERVICE_NAME": "c2c-receiver-orphan"},
            ),
        ]
        try:
            for service in started:
                service.wait_serving(180)
            yield Services(collector, receiver=started[1], orphan=started[2])
        finally:
            stop_services(started)


def generate(service: ServiceProcess, **fields) -> c2c_pb2.GenerateReply:
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        return c2c_pb2_grpc.ReceiverStub(channel).Generate(
            c2c_pb2.GenerateRequest(prompt=PROMPT, max_new_tokens=6, **fields), timeout=60
        )


def spans_of_trace(collector: OtlpReceiver, trace_id: str, names: tuple[str, ...]):
    """The trace's spans once every span in ``names`` has arrived, by name (first of each)."""
    spans = collector.wait_for_spans(
        lambda spans: set(names) <= {s.name for s in spans if s.trace_id == trace_id}
    )
    mine = [span for span in spans if span.trace_id == trace_id]
    return mine, {span.name: span for span in reversed(mine)}


def duration_ms(span: ReceivedSpan) -> float:
    return (span.end_ns - span.start_ns) / 1e6


def close(measured: float, reported: float, slack_ms: float = 2.0) -> bool:
    """Span timings and reply timings are taken by different clocks calls a few µs apart."""
    return math.isclose(measured, reported, rel_tol=0.05, abs_tol=slack_ms)


@pytest.fixture(scope="module")
def c2c_request(services: Services):
    reply = generate(services.receiver, mode=c2c_pb2.MODE_C2C)
    spans, named = spans_of_trace(services.collector, reply.trace_id, RECEIVER_SPANS + SHARER_SPANS)
    return reply, spans, named


def test_a_c2c_request_is_one_trace_over_both_services(c2c_request) -> None:
    reply, spans, named = c2c_request

    assert len(reply.trace_id) == 32 and reply.mode_used == c2c_pb2.MODE_C2C
    for name in RECEIVER_SPANS:
        assert named[name].service == "c2c-receiver", name
    for name in SHARER_SPANS:
        assert named[name].service == "c2c-sharer", name
    # The instrumentation's SERVER spans are ours, renamed: the RPC's server side is one span.
    assert named["receiver.generate"].kind == SPAN_KIND_SERVER
    assert named["sharer.prefill"].kind == SPAN_KIND_SERVER
    chain = ancestors(named["sharer.prefill"], spans)
    client = chain[0]
    assert (client.kind, client.name) == (SPAN_KIND_CLIENT, "/c2c.v1.Sharer/Prefill")
    assert client.service == "c2c-receiver"
    assert client.parent_id == named["network.transfer"].span_id
    assert named["kv.decode"].parent_id == client.span_id
    assert named["receiver.generate"] in chain
    assert named["sharer.forward"].parent_id == named["sharer.prefill"].span_id
    assert named["kv.encode"].parent_id == named["sharer.prefill"].span_id


def test_receiver_generate_attributes_match_the_reply(c2c_request) -> None:
    reply, _, named = c2c_request
    attributes = named["receiver.generate"].attributes

    assert attributes["c2c.mode"] == "c2c"
    assert attributes["c2c.mode_used"] == "c2c"
    assert attributes["c2c.prompt_tokens"] == reply.prompt_tokens
    assert attributes["c2c.new_tokens"] == len(reply.token_ids)
    assert "c2c.codec" in attributes
    assert named["receiver.tokenize"].attributes["c2c.prompt_tokens"] == reply.prompt_tokens
    assert named["receiver.prefill"].attributes["c2c.positions"] == reply.prompt_tokens - 1
    assert close(duration_ms(named["receiver.prefill"]), reply.timings.receiver_prefill)
    assert duration_ms(named["receiver.generate"]) >= reply.timings.total


def test_transfer_spans_agree_with_bytes_on_wire_and_layers(c2c_request) -> None:
    reply, _, named = c2c_request
    transfer = named["network.transfer"].attributes

    assert reply.bytes_on_wire > 0
    assert transfer["c2c.bytes_on_wire"] == reply.bytes_on_wire
    assert transfer["c2c.layers"] == len(reply.sharer_layers)
    assert transfer["c2c.messages"] > 2 * len(reply.sharer_layers)
    assert 0 <= transfer["c2c.blocked_ms"] <= reply.timings.transfer_blocked + 1e-6
    assert close(duration_ms(named["network.transfer"]), reply.timings.transfer)
    assert named["kv.decode"].attributes["c2c.layers"] == len(reply.sharer_layers)
    encode = named["kv.encode"]
    assert named["kv.decode"].attributes["c2c.raw_bytes"] == encode.attributes["c2c.raw_bytes"]
    assert encode.attributes["c2c.encoded_bytes"] == reply.bytes_on_wire
    assert [attrs["c2c.layer"] for name, attrs in encode.events if name == "layer"] == list(
        reply.sharer_layers
    )
    assert named["sharer.prefill"].attributes["c2c.layers"] == list(reply.sharer_layers)
    assert named["sharer.prefill"].attributes["c2c.positions"] == reply.prompt_tokens - 1
    assert close(duration_ms(named["sharer.forward"]), reply.timings.sharer_prefill)


def test_fusion_has_one_event_per_fused_layer_summing_to_the_fusion_time(c2c_request) -> None:
    reply, _, named = c2c_request
    layers = [attrs for name, attrs in named["fusion"].events if name == "layer"]

    assert sorted(attrs["c2c.layer"] for attrs in layers) == sorted(reply.fused_layers)
    assert all("c2c.gate" in attrs and "c2c.sharer_layer" in attrs for attrs in layers)
    total = sum(attrs["c2c.duration_ms"] for attrs in layers)
    assert math.isclose(total, reply.timings.fusion, rel_tol=1e-6, abs_tol=1e-6)
    assert named["fusion"].attributes["c2c.fused_layers"] == list(reply.fused_layers)


def test_decoding_reports_tokens_rate_and_time_to_first_token(c2c_request) -> None:
    reply, _, named = c2c_request
    decoding = named["decoding"].attributes

    assert decoding["c2c.new_tokens"] == len(reply.token_ids)
    assert decoding["c2c.tokens_per_s"] > 0
    assert math.isclose(
        decoding["c2c.time_to_first_token_ms"], reply.timings.time_to_first_token, rel_tol=1e-6
    )
    assert close(duration_ms(named["decoding"]), reply.timings.decode)


def test_a_fallback_request_carries_the_fallback_event(services: Services) -> None:
    reply = generate(services.orphan, mode=c2c_pb2.MODE_C2C, allow_fallback=True)
    _, named = spans_of_trace(services.collector, reply.trace_id, ("receiver.generate", "decoding"))
    generate_span = named["receiver.generate"]

    assert reply.mode_used == c2c_pb2.MODE_RECEIVER_ONLY and reply.fallback_reason
    assert generate_span.service == "c2c-receiver-orphan"
    assert generate_span.event("fallback") == {"c2c.fallback_reason": reply.fallback_reason}
    assert generate_span.attributes["c2c.mode_used"] == "receiver_only"
    assert generate_span.status_code != STATUS_ERROR


def test_requests_and_fallbacks_are_counted_in_the_exported_metrics(
    services: Services, c2c_request
) -> None:
    generate(services.orphan, mode=c2c_pb2.MODE_C2C, allow_fallback=True)
    ok = ("c2c-receiver", frozenset({("c2c.mode", "c2c"), ("c2c.status", "ok")}))
    fell_back = ("c2c-receiver-orphan", frozenset({("c2c.fallback_reason", "unavailable")}))

    services.collector.wait_until(
        lambda: (
            services.collector.counter("c2c.requests").get(ok, 0) >= 1
            and services.collector.counter("c2c.fallbacks").get(fell_back, 0) >= 1
        ),
        lambda: (
            str(services.collector.counter("c2c.requests"))
            + str(services.collector.counter("c2c.fallbacks"))
        ),
        timeout_s=30,
    )
    assert {"c2c.request.duration", "c2c.transfer.duration", "c2c.fusion.duration"} <= (
        services.collector.metric_names()
    )


def test_an_error_request_ends_its_spans_with_status_error(services: Services) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        generate(services.orphan, mode=c2c_pb2.MODE_C2C, allow_fallback=False)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

    def failed(spans: list[ReceivedSpan]) -> bool:
        return any(s.name == "receiver.generate" and s.status_code == STATUS_ERROR for s in spans)

    spans = services.collector.wait_for_spans(failed)
    generate_span = next(
        s for s in spans if s.name == "receiver.generate" and s.status_code == STATUS_ERROR
    )
    assert generate_span.event("exception") is not None
    assert generate_span.kind == SPAN_KIND_SERVER


def test_a_callers_trace_context_is_honoured(services: Services) -> None:
    caller_trace, caller_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with grpc.insecure_channel(f"127.0.0.1:{services.receiver.port}") as channel:
        reply = c2c_pb2_grpc.ReceiverStub(channel).Generate(
            c2c_pb2.GenerateRequest(prompt=PROMPT, max_new_tokens=2, mode=c2c_pb2.MODE_C2C),
            metadata=[("traceparent", f"00-{caller_trace}-{caller_span}-01")],
            timeout=60,
        )
    assert reply.trace_id == caller_trace
    spans = services.collector.wait_for_spans(
        lambda spans: any(s.parent_id == caller_span for s in spans)
    )
    (server,) = [s for s in spans if s.parent_id == caller_span]
    assert (server.kind, server.service) == (SPAN_KIND_SERVER, "c2c-receiver")
    assert server.name == "receiver.generate"
    assert server.trace_id == caller_trace


def test_trace_show_renders_a_real_request(c2c_request, services: Services, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from c2c.cli import app

    reply, spans, _ = c2c_request
    recorded = tmp_path / "collector.jsonl"
    services.collector.write_otlp_json_lines(recorded)
    result = CliRunner().invoke(app, ["trace", "show", str(recorded), "--trace-id", reply.trace_id])

    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"trace {reply.trace_id}  {len(spans)} spans")
    assert "services: c2c-receiver, c2c-sharer" in result.output


@pytest.mark.slow
def test_bench_tracing_times_both_arms_side_by_side(
    tiny_pair_dirs: TinyPair, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from c2c.cli import app

    fuser = save_random_fuser(tiny_pair_dirs.receiver, tiny_pair_dirs.llama_sharer, tmp_path)
    out = tmp_path / "tracing.json"
    result = CliRunner().invoke(
        app,
        ["bench", "tracing", "--receiver-model", str(tiny_pair_dirs.receiver)]
        + ["--sharer-model", str(tiny_pair_dirs.llama_sharer), "--fuser", str(fuser)]
        + ["--requests", "5", "--warmup", "1", "--rounds", "2", "--json", "--out", str(out)],
    )

    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    on, off = report["tracing_on"], report["tracing_off"]
    assert len(on["latencies_ms"]) == len(off["latencies_ms"]) == 5  # 3 + 2 over two rounds
    assert report["rounds"] == 2
    assert on["spans_exported"] >= 5 * len(RECEIVER_SPANS + SHARER_SPANS)
    assert off["spans_exported"] == 0
    assert report["median_ratio"] == pytest.approx(on["median_ms"] / off["median_ms"])
    assert 0 < report["new_tokens_median"] <= report["max_new_tokens"]
    low, high = report["median_ratio_ci95"]
    assert low <= report["median_ratio"] <= high
    low, high = report["median_paired_ratio_ci95"]
    assert low <= report["median_paired_ratio"] <= high


def test_median_ratio_interval_is_as_wide_as_the_noise() -> None:
    from c2c.benchmarks.tracing import median_ratio_interval

    assert median_ratio_interval([110.0] * 50, [100.0] * 50) == pytest.approx((1.1, 1.1))
    noisy = [60.0 + (i * 37) % 50 for i in range(50)]  # 60..109 ms, shuffled
    low, high = median_ratio_interval(noisy, noisy)
    assert low < 1.0 < high
    assert high - low > 0.05


def test_paired_median_ratio_cancels_the_order_within_pairs() -> None:
    from c2c.benchmarks.tracing import paired_median_ratio, paired_median_ratio_interval

    # True ratio 1.02; whichever request runs second in its pair is 3% slower, the orders
    # alternating ("on" first in even pairs) as the bench runs them.
    off = [100.0 + (i * 17) % 30 for i in range(40)]
    on = [base * 1.02 * (1 / 1.03 if i % 2 == 0 else 1.03) for i, base in enumerate(off)]
    assert paired_median_ratio(on, off) == pytest.approx(1.02)
    assert paired_median_ratio_interval(on, off) == pytest.approx((1.02, 1.02))
