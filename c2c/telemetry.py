"""OpenTelemetry set-up shared by both services: traces, metrics, gRPC context propagation.

Everything is configured by the standard ``OTEL_*`` environment variables so that an operator
points both services at a collector without touching code. The SDK already reads most of them
(sampler, resource attributes, OTLP endpoint/headers/timeouts); this module only chooses exporters
from ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` and adds what the SDK lacks: a writer of
OTLP-JSON lines in the format of the Collector's file exporter (``otlp_json_file``).

Telemetry is per process: the first ``setup_telemetry`` call installs the global providers, later
calls return the same object.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.grpc import (
    client_interceptor,
    filters,
    grpcext,
    server_interceptor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, format_trace_id
from prometheus_client import start_http_server

from c2c import __version__
from c2c.deferred_spans import AfterRpc, deferring_leaf_spans

_logger = logging.getLogger(__name__)

TRACES_FILE_ENV = "C2C_OTLP_JSON_FILE"
"""Path the ``otlp_json_file`` trace exporter appends to (stdout when unset).

OpenTelemetry defines no environment variable for a file exporter's path, so this one is ours.
"""

METRICS_FILE_ENV = "C2C_OTLP_JSON_METRICS_FILE"
"""Path the ``otlp_json_file`` metrics exporter appends to (stdout when unset)."""

MODEL_NAME_ATTRIBUTE = "c2c.model.name"


class TelemetryConfigError(ValueError):
    """An ``OTEL_*`` variable names an exporter or protocol that does not exist."""


@dataclass
class Telemetry:
    """The process's providers; ``shutdown`` flushes what is still buffered."""

    service_name: str
    resource: Resource
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    trace_exporters: list[str] = field(default_factory=list)
    metric_exporters: list[str] = field(default_factory=list)
    is_shut_down: bool = False

    def flush(self, timeout_ms: int = 10_000) -> bool:
        """Export every finished span and the current metrics now; False if it timed out."""
        spans_done = self.tracer_provider.force_flush(timeout_ms)
        metrics_done = self.meter_provider.force_flush(timeout_ms)
        return bool(spans_done and metrics_done)

    def shutdown(self) -> None:
        """Flush and stop the exporters; call once, when the process stops serving."""
        if self.is_shut_down:
            return
        self.is_shut_down = True
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


_lock = threading.Lock()
_active: Telemetry | None = None


def setup_telemetry(service_name: str, *, model_name: str = "", **attrs: str) -> Telemetry:
    """Install the global tracer and meter providers for this process, configured from OTEL_*.

    ``service_name`` is the default; ``OTEL_SERVICE_NAME`` overrides it. ``attrs`` become extra
    resource attributes (``OTEL_RESOURCE_ATTRIBUTES`` wins on conflicts). Idempotent: a second
    call returns the first call's object.
    """
    global _active
    with _lock:
        if _active is not None:
            if _active.service_name != (os.environ.get("OTEL_SERVICE_NAME") or service_name):
                _logger.warning(
                    "telemetry already set up for %r in this process; %r shares it",
                    _active.service_name,
                    service_name,
                )
            return _active
        resource = _build_resource(service_name, model_name, attrs)
        trace_names = _exporter_names("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        metric_names = _exporter_names(
            "OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
        )
        tracer_provider = TracerProvider(resource=resource)
        for name in trace_names:
            tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(name)))
        # Always able to answer Prometheus scrapes: start_prometheus_endpoint may come later.
        readers = [PrometheusMetricReader()]
        readers += [_metric_reader(name) for name in metric_names if name != "prometheus"]
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        _active = Telemetry(
            service_name=str(resource.attributes["service.name"]),
            resource=resource,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            trace_exporters=trace_names,
            metric_exporters=metric_names,
        )
        _logger.info(
            "telemetry for %s: traces -> %s, metrics -> %s",
            _active.service_name,
            ", ".join(trace_names) or "none",
            ", ".join(metric_names) or "none",
        )
    if "prometheus" in metric_names:
        start_prometheus_endpoint(
            int(os.environ.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464")),
            os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost"),
        )
    return _active


def active_telemetry() -> Telemetry | None:
    """The process's telemetry, or None before ``setup_telemetry``."""
    return _active


def current_trace_id() -> str:
    """32 hex digits of the current span's trace (what a reply's ``trace_id`` carries)."""
    context = trace.get_current_span().get_span_context()
    return format_trace_id(context.trace_id) if context.is_valid else ""


def _build_resource(service_name: str, model_name: str, attrs: dict[str, str]) -> Resource:
    """Our attributes under those of OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, which
    ``Resource.create`` reads itself and which must win."""
    ours = {
        "service.name": service_name,
        "service.version": __version__,
        "host.name": socket.gethostname(),
        **({MODEL_NAME_ATTRIBUTE: model_name} if model_name else {}),
        **attrs,
    }
    from_env = OTELResourceDetector().detect().attributes
    return Resource.create({key: value for key, value in ours.items() if key not in from_env})


def _exporter_names(variable: str, signal_endpoint_variable: str) -> list[str]:
    """Exporter names from ``variable``; unset means otlp when an endpoint is configured."""
    raw = os.environ.get(variable)
    if raw is None:
        has_endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            signal_endpoint_variable
        )
        raw = "otlp" if has_endpoint else "none"
    names = [name.strip() for name in raw.split(",") if name.strip()]
    return [] if names == ["none"] else names


def _otlp_protocol(signal: str) -> str:
    protocol = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol not in ("grpc", "http/protobuf"):
        raise TelemetryConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: expected 'grpc' or 'http/protobuf'"
        )
    return protocol


def _span_exporter(name: str) -> SpanExporter:
    if name == "otlp":
        if _otlp_protocol("TRACES") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    if name == "otlp_json_file":
        return OtlpJsonFileSpanExporter(os.environ.get(TRACES_FILE_ENV) or None)
    return _entry_point("opentelemetry_traces_exporter", name, "OTEL_TRACES_EXPORTER")()


def _metric_reader(name: str) -> MetricReader:
    if name == "otlp":
        if _otlp_protocol("METRICS") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        return PeriodicExportingMetricReader(OTLPMetricExporter())
    if name == "otlp_json_file":
        return PeriodicExportingMetricReader(
            OtlpJsonFileMetricExporter(os.environ.get(METRICS_FILE_ENV) or None)
        )
    exporter = _entry_point("opentelemetry_metrics_exporter", name, "OTEL_METRICS_EXPORTER")()
    return (
        exporter if isinstance(exporter, MetricReader) else PeriodicExportingMetricReader(exporter)
    )


def _entry_point(group: str, name: str, variable: str):
    found = entry_points(group=group, name=name)
    if not found:
        known = sorted({ep.name for ep in entry_points(group=group)} | {"otlp", "otlp_json_file"})
        raise TelemetryConfigError(
            f"{variable}={name!r}: unknown exporter; known: {', '.join(known)}, none"
        )
    return next(iter(found)).load()


# ---------------------------------------------------------------------------------------------
# OTLP-JSON lines: one ExportTraceServiceRequest per export batch, as the Collector writes them.
# ---------------------------------------------------------------------------------------------

_HEX_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})


def otlp_json(message) -> dict:
    """OTLP/JSON of an OTLP protobuf message: camelCase, enums as numbers, ids as hex."""
    return _hex_ids(MessageToDict(message, use_integers_for_enums=True))


def _hex_ids(node):
    if isinstance(node, dict):
        return {
            key: base64.b64decode(value).hex()
            if key in _HEX_ID_KEYS and isinstance(value, str)
            else _hex_ids(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids(item) for item in node]
    return node


class _JsonLinesWriter:
    """Appends one JSON document per line to a file, or to stdout when no path is given.

    A file line goes out in one ``write`` on an ``O_APPEND`` descriptor, so both services can
    append to the same file without their (often long) lines interleaving.
    """

    def __init__(self, path: str | None) -> None:
        self._to_stdout = not path
        self._fd = (
            None
            if self._to_stdout
            else os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        )
        self._lock = threading.Lock()

    def write(self, document: dict) -> None:
        line = json.dumps(document, separators=(",", ":")) + "\n"
        with self._lock:
            if self._to_stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                return
            if self._fd is None:
                raise ValueError("the exporter is shut down")
            data = line.encode("utf-8")
            while data:
                data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class OtlpJsonFileSpanExporter(SpanExporter):
    """Writes each span batch as one OTLP-JSON line (``OTEL_TRACES_EXPORTER=otlp_json_file``)."""

    def __init__(self, path: str | None = None) -> None:
        self._writer = _JsonLinesWriter(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            self._writer.write(otlp_json(encode_spans(spans)))
        except (OSError, ValueError) as error:
            _logger.error("otlp_json_file: could not write %d spans: %s", len(spans), error)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._writer.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class OtlpJsonFileMetricExporter(MetricExporter):
    """Writes each metrics collection as one OTLP-JSON line (``OTEL_METRICS_EXPORTER``)."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self._writer = _JsonLinesWriter(path)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs
    ) -> MetricExportResult:
        try:
            self._writer.write(otlp_json(encode_metrics(metrics_data)))
        except (OSError, ValueError) as error:
            _logger.error("otlp_json_file: could not write metrics: %s", error)
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self._writer.close()


# ---------------------------------------------------------------------------------------------
# gRPC context propagation (W3C trace context in metadata), via the OpenTelemetry instrumentation.
# ---------------------------------------------------------------------------------------------


def grpc_server_interceptor() -> grpc.ServerInterceptor:
    """Server interceptor: one SERVER span per RPC, child of the caller's trace context if sent.

    Health checks are not traced (probes would drown the requests).
    """
    return server_interceptor(filter_=filters.negate(filters.health_check()))


def intercept_client_channel(channel: grpc.Channel) -> grpc.Channel:
    """The channel with a client interceptor that opens a CLIENT span and sends its context."""
    # The instrumentation's interceptor speaks its own grpcext protocol, hence its wrapper.
    return grpcext.intercept_channel(channel, _client_interceptor())


@functools.cache
def _client_interceptor() -> grpcext.UnaryClientInterceptor:
    """One interceptor for the process: building one looks a tracer up, and the receiver opens
    a channel per Prefill stream, ahead of the sharer's work."""
    return client_interceptor(filter_=filters.negate(filters.health_check()))


_tracer = trace.get_tracer(__name__)


@contextmanager
def rpc_server_span(name: str, after_rpc: AfterRpc | None = None) -> Iterator[trace.Span]:
    """The span of this RPC's server side, named ``name``, current inside the block.

    In a handler the instrumentation's SERVER span is current: it is renamed and used rather than
    opening a second span under it that covers the same time (every span costs the request
    tens of microseconds), so the caller's CLIENT span is the direct parent. Without one (a
    direct call, tracing off) a span is started here. An exception escaping the block is
    recorded on the span and sets status ERROR; the interceptor ends the span.

    Leaf spans opened inside (``leaf_span``) are built by ``after_rpc``'s callback: pass the
    ``ServicerContext``'s ``add_callback`` to build them once the RPC has completed.
    """
    current = trace.get_current_span()
    if (
        isinstance(current, ReadableSpan)
        and current.kind is SpanKind.SERVER
        and current.is_recording()
    ):
        current.update_name(name)
        with trace.use_span(current, end_on_exit=False), deferring_leaf_spans(after_rpc):
            yield current
    else:
        with _tracer.start_as_current_span(name) as span, deferring_leaf_spans(after_rpc):
            yield span


# ---------------------------------------------------------------------------------------------
# Metrics the services record. Instruments come from the global meter (a proxy until setup).
# ---------------------------------------------------------------------------------------------

_meter = metrics.get_meter("c2c", __version__)
_request_duration = _meter.create_histogram(
    "c2c.request.duration", unit="ms", description="Receiver request latency, receipt to reply"
)
_transfer_duration = _meter.create_histogram(
    "c2c.transfer.duration",
    unit="ms",
    description="KV transfer from the sharer, as the receiver saw it",
)
_fusion_duration = _meter.create_histogram(
    "c2c.fusion.duration", unit="ms", description="Projector and gated fusion, summed over layers"
)
_bytes_on_wire = _meter.create_histogram(
    "c2c.bytes_on_wire", unit="By", description="KV (or text) payload bytes received per request"
)
_requests = _meter.create_counter(
    "c2c.requests", unit="{request}", description="Requests by requested mode and final status"
)
_fallbacks = _meter.create_counter(
    "c2c.fallbacks", unit="{request}", description="Requests answered receiver_only after a failure"
)


def record_request(
    mode: str,
    status: str,
    latency_ms: float,
    transfer_ms: float | None = None,
    fusion_ms: float | None = None,
    bytes_on_wire: int | None = None,
) -> None:
    """Record one finished request. ``None`` means "not applicable" (no sharer involved)."""
    labels = {"c2c.mode": mode, "c2c.status": status}
    _requests.add(1, labels)
    _request_duration.record(latency_ms, labels)
    if transfer_ms is not None:
        _transfer_duration.record(transfer_ms, {"c2c.mode": mode})
    if fusion_ms is not None:
        _fusion_duration.record(fusion_ms, {"c2c.mode": mode})
    if bytes_on_wire is not None:
        _bytes_on_wire.record(bytes_on_wire, {"c2c.mode": mode})


def record_fallback(reason: str) -> None:
    """Count one fallback to receiver_only; ``reason`` is a short category, not a message."""
    _fallbacks.add(1, {"c2c.fallback_reason": reason})


def start_prometheus_endpoint(port: int, host: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` for Prometheus on ``host:port`` (0 picks a free port); returns the port.

    Call after ``setup_telemetry``, whose meter provider always carries the reader that answers
    scrapes. ``OTEL_METRICS_EXPORTER=prometheus`` starts one too, on
    ``OTEL_EXPORTER_PROMETHEUS_HOST:OTEL_EXPORTER_PROMETHEUS_PORT`` as the SDK documents.
    """
    if _active is None:
        raise RuntimeError("start_prometheus_endpoint: call setup_telemetry first")
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
