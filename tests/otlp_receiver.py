"""A real OTLP receiver for tests: what a Collector would get from our exporters.

It serves the OTLP/gRPC TraceService and MetricsService (from the opentelemetry-proto package)
and OTLP/HTTP ``/v1/traces`` on 127.0.0.1, keeps every span it is sent, and can write them out
as OTLP-JSON lines the way the Collector's file exporter does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from c2c.telemetry import otlp_json

SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2


@dataclass
class ReceivedSpan:
    """One span as it arrived, decoded from protobuf; ids as lowercase hex."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    service: str
    resource: dict[str, Any]
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    status_message: str
    start_ns: int
    end_ns: int

    def event(self, name: str) -> dict[str, Any] | None:
        """Attributes of the first event called ``name``, or None."""
        return next((attrs for event, attrs in self.events if event == name), None)


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """``span``'s parent, grandparent, ... as far as ``spans`` reach, nearest first."""
    index = {candidate.span_id: candidate for candidate in spans}
    chain = []
    while span.parent_id in index:
        span = index[span.parent_id]
        chain.append(span)
    return chain


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {pair.key: _value(pair.value) for pair in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _attributes(pairs) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass
class OtlpReceiver:
    """Collects OTLP exports; start() binds free ports on 127.0.0.1."""

    trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(
        default_factory=list
    )
    grpc_port: int = 0
    http_port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._grpc_server: grpc.Server | None = None
        self._http_server: ThreadingHTTPServer | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> OtlpReceiver:
        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 (gRPC method name)
                receiver._keep(receiver.trace_requests, request)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):  # noqa: N802 (gRPC method name)
                receiver._keep(receiver.metric_requests, request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        class TracesOverHttp(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server method name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver._keep(receiver.trace_requests, request)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._grpc_server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self._grpc_server)
        self.grpc_port = self._grpc_server.add_insecure_port("127.0.0.1:0")
        self._grpc_server.start()
        self._http_server = ThreadingHTTPServer(("127.0.0.1", 0), TracesOverHttp)
        self.http_port = self._http_server.server_address[1]
        threading.Thread(target=self._http_server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None)
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()

    def _keep(self, into: list, request) -> None:
        with self._lock:
            into.append(request)
            self._lock.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order."""
        with self._lock:
            requests = list(self.trace_requests)
        found = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append(
                            ReceivedSpan(
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                name=span.name,
                                kind=span.kind,
                                service=str(resource.get("service.name", "")),
                                resource=resource,
                                attributes=_attributes(span.attributes),
                                events=[(e.name, _attributes(e.attributes)) for e in span.events],
                                status_code=span.status.code,
                                status_message=span.status.message,
                                start_ns=span.start_time_unix_nano,
                                end_ns=span.end_time_unix_nano,
                            )
                        )
        return found

    def wait_until(
        self, done: Callable[[], bool], what: Callable[[], str], timeout_s: float
    ) -> None:
        """Block until ``done()`` after an export arrives; fail with ``what()`` if it never does."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"not received within {timeout_s}s; got {what()}")
                self._lock.wait(min(left, 0.2))

    def wait_for_spans(
        self, done: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 30.0
    ) -> list[ReceivedSpan]:
        """Block until ``done(spans)`` holds; fail the test with what arrived if it never does."""
        self.wait_until(
            lambda: done(self.spans()),
            lambda: str(sorted({(span.service, span.name) for span in self.spans()})),
            timeout_s,
        )
        return self.spans()

    def counter(self, name: str) -> dict[tuple[str, frozenset], float]:
        """Latest cumulative value of counter ``name`` per (service, attribute set)."""
        with self._lock:
            requests = list(self.metric_requests)
        values = {}
        for request in requests:
            for resource_metrics in request.resource_metrics:
                service = _attributes(resource_metrics.resource.attributes).get("service.name")
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        if metric.name != name:
                            continue
                        for point in metric.sum.data_points:
                            labels = frozenset(_attributes(point.attributes).items())
                            value = point.as_int if point.HasField("as_int") else point.as_double
                            values[service, labels] = value
        return values

    def metric_names(self) -> set[str]:
        with self._lock:
            requests = list(self.metric_requests)
        return {
            metric.name
            for request in requests
            for resource_metrics in request.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
        }

    def write_otlp_json_lines(self, path: Path) -> None:
        """What the Collector's file exporter would have written: one line per export."""
        with self._lock:
            requests = list(self.trace_requests)
        with path.open("w", encoding="utf-8") as out:
            for request in requests:
                out.write(json.dumps(otlp_json(request), separators=(",", ":")) + "\n")


@contextmanager
def running_otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()
