"""Leaf spans recorded during a request and built afterwards look as if they had been live spans."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from c2c.deferred_spans import deferring_leaf_spans, leaf_span
from c2c.telemetry import setup_telemetry

tracer = trace.get_tracer(__name__)


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    setup_telemetry("c2c-tests").tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def finished(exporter: InMemorySpanExporter, name: str, parent: trace.Span) -> list:
    parent_id = parent.get_span_context().span_id
    return [
        span
        for span in exporter.get_finished_spans()
        if span.name == name and span.parent is not None and span.parent.span_id == parent_id
    ]


class Callbacks:
    """Stands in for ``ServicerContext.add_callback``; ``rpc_over`` as after the RPC ended."""

    def __init__(self, rpc_over: bool = False) -> None:
        self.rpc_over = rpc_over
        self.registered: list[Callable[[], None]] = []

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self.rpc_over:
            return False
        self.registered.append(callback)
        return True


def test_leaf_spans_are_built_by_the_rpc_callback_with_what_they_recorded(
    exporter: InMemorySpanExporter,
) -> None:
    callbacks = Callbacks()
    with tracer.start_as_current_span("server") as server:
        with deferring_leaf_spans(callbacks.add_callback):
            with leaf_span("work") as span:
                span.set_attributes({"c2c.positions": 7})
                span.add_event("layer", {"c2c.layer": 3})
                inside = time.time_ns()
    assert finished(exporter, "work", server) == []  # nothing built before the RPC completes
    (build,) = callbacks.registered
    build()
    (work,) = finished(exporter, "work", server)
    assert work.context.trace_id == server.get_span_context().trace_id
    assert work.start_time <= inside <= work.end_time <= server.end_time
    assert work.attributes["c2c.positions"] == 7
    (event,) = work.events
    assert (event.name, event.attributes["c2c.layer"]) == ("layer", 3)
    assert work.start_time <= event.timestamp <= inside
    assert work.status.status_code is StatusCode.UNSET


def test_an_rpc_already_over_gets_its_spans_as_the_block_ends(
    exporter: InMemorySpanExporter,
) -> None:
    with tracer.start_as_current_span("server") as server:
        with deferring_leaf_spans(Callbacks(rpc_over=True).add_callback):
            with leaf_span("work"):
                pass
        assert len(finished(exporter, "work", server)) == 1


def test_an_exception_escaping_a_leaf_span_is_recorded_with_status_error(
    exporter: InMemorySpanExporter,
) -> None:
    with tracer.start_as_current_span("server") as server:
        with pytest.raises(KeyError), leaf_span("work"):
            raise KeyError("layer 9")
    (work,) = finished(exporter, "work", server)
    assert work.status.status_code is StatusCode.ERROR
    assert "KeyError" in work.status.description
    (event,) = work.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "KeyError"


def test_a_consumer_closing_a_generator_is_not_an_error(exporter: InMemorySpanExporter) -> None:
    def deltas() -> Iterator[int]:
        with leaf_span("decoding"):
            yield 1
            yield 2

    with tracer.start_as_current_span("server") as server:
        stream = deltas()
        next(stream)
        stream.close()  # the client went away
    (decoding,) = finished(exporter, "decoding", server)
    assert decoding.status.status_code is StatusCode.UNSET
    assert decoding.events == ()


def test_an_unsampled_request_records_no_leaf_span(exporter: InMemorySpanExporter) -> None:
    unsampled = trace.NonRecordingSpan(
        trace.SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=True)
    )
    before = len(exporter.get_finished_spans())
    with trace.use_span(unsampled), leaf_span("work") as span:
        assert not span.is_recording()
        span.set_attribute("c2c.positions", 1)
    assert len(exporter.get_finished_spans()) == before
