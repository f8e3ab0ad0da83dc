"""c2c.telemetry as a service uses it: configured by OTEL_* only, exporting to a real collector.

Each configuration runs in its own process (the providers are per process, as in a service);
the spans and metrics are checked where they arrive: a real OTLP receiver on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from c2c.benchmarks.tracing import otel_free_env
from tests.otlp_receiver import (
    SPAN_KIND_CLIENT,
    SPAN_KIND_SERVER,
    STATUS_ERROR,
    OtlpReceiver,
    ReceivedSpan,
    ancestors,
    running_otlp_receiver,
)
from tests.traced_rpc_pair import REPO, run_traced_pair


@pytest.fixture
def collector() -> Iterator[OtlpReceiver]:
    with running_otlp_receiver() as receiver:
        yield receiver


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.name: span for span in spans}


def test_both_processes_export_one_trace_over_otlp_grpc(collector: OtlpReceiver) -> None:
    env = otel_free_env(
        OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=collector.grpc_endpoint
    )
    trace_id = run_traced_pair(env, env).strip()

    spans = collector.wait_for_spans(lambda spans: "sharer.prefill" in by_name(spans))
    assert {span.trace_id for span in spans} == {trace_id}
    named = by_name(spans)
    server_span = named["sharer.prefill"]  # the instrumentation's SERVER span, renamed
    chain = ancestors(server_span, spans)
    client_span = chain[0]
    assert (client_span.kind, server_span.kind) == (SPAN_KIND_CLIENT, SPAN_KIND_SERVER)
    assert client_span.service == "demo-receiver" and server_span.service == "demo-sharer"
    assert chain[-1] is named["receiver.generate"]
    assert named["kv.encode"].parent_id == named["sharer.prefill"].span_id


def test_a_callers_trace_context_is_honoured_by_the_server(collector: OtlpReceiver) -> None:
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    env = otel_free_env(
        OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=collector.grpc_endpoint
    )
    run_traced_pair(env, env, traceparent=f"00-{caller_trace}-{caller_span}-01")

    spans = collector.wait_for_spans(lambda spans: "sharer.prefill" in by_name(spans))
    server_span = by_name(spans)["sharer.prefill"]
    assert server_span.kind == SPAN_KIND_SERVER
    assert server_span.trace_id == caller_trace
    assert server_span.parent_id == caller_span


def test_resource_carries_service_version_model_host_and_otel_overrides(
    collector: OtlpReceiver,
) -> None:
    env = otel_free_env(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.grpc_endpoint,
        OTEL_SERVICE_NAME="receiver-eu-1",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test,host.name=node-7",
    )
    result = run_python(
        """
        from opentelemetry import trace
        from c2c.telemetry import setup_telemetry
        telemetry = setup_telemetry("c2c-receiver", model_name="tiny-qwen", **{"c2c.role": "rx"})
        trace.get_tracer("t").start_span("receiver.generate").end()
        telemetry.shutdown()
        """,
        env,
    )
    assert result.returncode == 0, result.stderr

    (span,) = collector.wait_for_spans(lambda spans: len(spans) == 1)
    from c2c import __version__

    assert span.resource["service.name"] == "receiver-eu-1"
    assert span.resource["service.version"] == __version__
    assert span.resource["c2c.model.name"] == "tiny-qwen"
    assert span.resource["c2c.role"] == "rx"
    assert span.resource["deployment.environment"] == "test"
    assert span.resource["host.name"] == "node-7"


def test_otlp_over_http_protobuf_reaches_the_collector(collector: OtlpReceiver) -> None:
    env = otel_free_env(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.http_endpoint,
    )
    result = run_python(
        """
        from opentelemetry import trace
        from c2c.telemetry import setup_telemetry
        telemetry = setup_telemetry("c2c-sharer")
        trace.get_tracer("t").start_span("sharer.prefill").end()
        telemetry.shutdown()
        """,
        env,
    )
    assert result.returncode == 0, result.stderr
    (span,) = collector.wait_for_spans(lambda spans: len(spans) == 1)
    assert (span.name, span.service) == ("sharer.prefill", "c2c-sharer")


def test_file_exporter_writes_one_otlp_json_line_per_batch(tmp_path: Path) -> None:
    out = tmp_path / "traces.jsonl"
    env = otel_free_env(OTEL_TRACES_EXPORTER="otlp_json_file", C2C_OTLP_JSON_FILE=str(out))
    result = run_python(
        """
        from opentelemetry import trace
        from c2c.telemetry import current_trace_id, setup_telemetry
        telemetry = setup_telemetry("c2c-receiver")
        tracer = trace.get_tracer("t")
        for name in ("first", "second"):
            with tracer.start_as_current_span(name, attributes={"c2c.prompt_tokens": 7}):
                print(current_trace_id())
            telemetry.flush()
        telemetry.shutdown()
        """,
        env,
    )
    assert result.returncode == 0, result.stderr

    lines = out.read_text().splitlines()
    assert len(lines) == 2
    printed_ids = result.stdout.split()
    for line, trace_id in zip(lines, printed_ids, strict=True):
        (span,) = json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"]
        assert span["traceId"] == trace_id and len(trace_id) == 32
        assert len(span["spanId"]) == 16
        assert span["attributes"] == [{"key": "c2c.prompt_tokens", "value": {"intValue": "7"}}]


def test_console_exporter_prints_spans() -> None:
    result = run_python(
        """
        from opentelemetry import trace
        from c2c.telemetry import setup_telemetry
        telemetry = setup_telemetry("c2c-sharer")
        trace.get_tracer("t").start_span("kv.encode").end()
        telemetry.shutdown()
        """,
        otel_free_env(OTEL_TRACES_EXPORTER="console"),
    )
    assert result.returncode == 0, result.stderr
    assert '"name": "kv.encode"' in result.stdout
    assert '"service.name": "c2c-sharer"' in result.stdout


def test_rpc_server_span_outside_a_handler_starts_a_span_of_its_own(
    collector: OtlpReceiver,
) -> None:
    env = otel_free_env(
        OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=collector.grpc_endpoint
    )
    result = run_python(
        """
        from opentelemetry import trace
        from c2c.telemetry import rpc_server_span, setup_telemetry
        telemetry = setup_telemetry("c2c-receiver")
        with trace.get_tracer("t").start_as_current_span("caller"):
            try:
                with rpc_server_span("receiver.generate"):
                    raise ValueError("boom")
            except ValueError:
                pass
        telemetry.shutdown()
        """,
        env,
    )
    assert result.returncode == 0, result.stderr
    named = by_name(collector.wait_for_spans(lambda spans: len(spans) == 2))
    assert named["receiver.generate"].parent_id == named["caller"].span_id
    assert named["receiver.generate"].status_code == STATUS_ERROR
    assert named["receiver.generate"].event("exception") is not None


def test_always_off_sampler_exports_nothing(collector: OtlpReceiver) -> None:
    env = otel_free_env(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.grpc_endpoint,
        OTEL_TRACES_SAMPLER="always_off",
    )
    result = run_python(
        """
        from opentelemetry import trace
        from c2c.telemetry import setup_telemetry
        telemetry = setup_telemetry("c2c-receiver")
        span = trace.get_tracer("t").start_span("receiver.generate")
        print(span.is_recording())
        span.end()
        telemetry.shutdown()
        """,
        env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert collector.spans() == []


def test_unknown_exporter_name_is_one_clear_error() -> None:
    result = run_python(
        "from c2c.telemetry import setup_telemetry; setup_telemetry('c2c-receiver')",
        otel_free_env(OTEL_TRACES_EXPORTER="jaeger_typo"),
    )
    assert result.returncode != 0
    assert "OTEL_TRACES_EXPORTER='jaeger_typo': unknown exporter" in result.stderr


def test_request_metrics_reach_the_collector_over_otlp(collector: OtlpReceiver) -> None:
    env = otel_free_env(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.grpc_endpoint,
    )
    result = run_python(
        """
        from c2c.telemetry import record_fallback, record_request, setup_telemetry
        telemetry = setup_telemetry("c2c-receiver")
        record_request("c2c", "OK", 21.5, transfer_ms=4.0, fusion_ms=1.5, bytes_on_wire=2048)
        record_fallback("sharer_unavailable")
        telemetry.shutdown()
        """,
        env,
    )
    assert result.returncode == 0, result.stderr
    assert {
        "c2c.requests",
        "c2c.request.duration",
        "c2c.transfer.duration",
        "c2c.fusion.duration",
        "c2c.bytes_on_wire",
        "c2c.fallbacks",
    } <= collector.metric_names()


def test_prometheus_endpoint_serves_request_and_fallback_counters() -> None:
    result = run_python(
        """
        import urllib.request
        from c2c.telemetry import (
            record_fallback, record_request, setup_telemetry, start_prometheus_endpoint)
        setup_telemetry("c2c-receiver")
        record_request("c2c", "OK", 12.0, transfer_ms=3.0, fusion_ms=1.0, bytes_on_wire=100)
        record_request("receiver_only", "UNAVAILABLE", 3.0)
        record_fallback("sharer_unavailable")
        port = start_prometheus_endpoint(0, host="127.0.0.1")
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
        print(page.read().decode())
        """,
        otel_free_env(),
    )
    assert result.returncode == 0, result.stderr
    samples = [line for line in result.stdout.splitlines() if not line.startswith("#")]

    def sample(prefix: str, *labels: str) -> float:
        line = next(s for s in samples if s.startswith(prefix) and all(x in s for x in labels))
        return float(line.rsplit(" ", 1)[1])

    assert sample("c2c_requests_total", 'c2c_mode="c2c"', 'c2c_status="OK"') == 1.0
    assert sample("c2c_requests_total", 'c2c_mode="receiver_only"') == 1.0
    assert sample("c2c_fallbacks_total", 'c2c_fallback_reason="sharer_unavailable"') == 1.0
    assert sample("c2c_request_duration_milliseconds_count", 'c2c_mode="c2c"') == 1.0


def test_two_processes_appending_to_one_file_never_interleave_lines(tmp_path: Path) -> None:
    out = tmp_path / "shared.jsonl"
    env = otel_free_env(OTEL_TRACES_EXPORTER="otlp_json_file", C2C_OTLP_JSON_FILE=str(out))
    writer = """
        from opentelemetry import trace
        from c2c.telemetry import setup_telemetry
        telemetry = setup_telemetry("writer")
        tracer = trace.get_tracer("t")
        for batch in range(20):
            for index in range(300):
                tracer.start_span("s", attributes={"c2c.padding": "x" * 64}).end()
            telemetry.flush()
        telemetry.shutdown()
        """
    children = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(writer)], env=env, cwd=REPO, text=True
        )
        for _ in range(2)
    ]
    assert [child.wait(timeout=120) for child in children] == [0, 0]

    spans = 0
    for line in out.read_text().splitlines():
        for resource_spans in json.loads(line)["resourceSpans"]:
            spans += sum(len(scope["spans"]) for scope in resource_spans["scopeSpans"])
    assert spans == 2 * 20 * 300
