"""Leaf spans recorded as plain data during a request and built into OpenTelemetry spans after it.

In a service process busy with model work, each SDK span start costs about 70 µs and each event
about 35 µs (measured inside the running services; a micro-benchmark reads several times less):
the receiver's and sharer's leaf spans cost a request over a millisecond that way. A deferred
span costs two clock readings, a dict and a list append. Inside ``deferring_leaf_spans`` the SDK
builds the same spans, with the recorded timestamps, events and errors, once the RPC has
completed (``after_rpc`` is ``ServicerContext.add_callback``): off the latency the client sees.

Only a leaf can be deferred. A span that parents another, such as the one whose context goes out
in a call's metadata, must be a live SDK span while its children start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

_tracer = trace.get_tracer(__name__)

AfterRpc = Callable[[Callable[[], None]], bool]
"""Registers a callback to run once the RPC has completed and says whether it could
(``grpc.ServicerContext.add_callback``)."""

# The current request's deferred spans; None outside ``deferring_leaf_spans``. Worker threads
# started with a copy of the request's context append to the same list.
_pending: ContextVar[list[DeferredSpan] | None] = ContextVar("c2c_deferred_spans", default=None)


@dataclass(slots=True)
class DeferredSpan:
    """What a leaf span records; the part of the ``Span`` API our leaf spans use."""

    name: str
    parent: trace.Span
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    events: list[tuple[str, Mapping[str, AttributeValue] | None, int]] = field(default_factory=list)
    error: BaseException | None = None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        self.events.append((name, attributes, time.time_ns()))

    def is_recording(self) -> bool:
        return True

    def build(self) -> None:
        """Hand the span to the SDK (and so to its span processors and exporters)."""
        span = _tracer.start_span(
            self.name,
            context=trace.set_span_in_context(self.parent),
            attributes=self.attributes,
            start_time=self.start_ns,
        )
        for name, attributes, timestamp in self.events:
            span.add_event(name, attributes, timestamp=timestamp)
        if self.error is not None:
            span.record_exception(self.error, timestamp=self.end_ns, escaped=True)
            span.set_status(
                trace.Status(trace.StatusCode.ERROR, f"{type(self.error).__name__}: {self.error}")
            )
        span.end(end_time=self.end_ns)


@contextmanager
def leaf_span(name: str) -> Iterator[DeferredSpan | trace.Span]:
    """A span under the current one that has no spans under it.

    Inside ``deferring_leaf_spans`` it is built when that block says; elsewhere when this block
    ends. An exception escaping the block is recorded with status ERROR, as an SDK span records
    it; a generator closed by its consumer (``GeneratorExit``: a client that went away) is not.
    Yields a no-op span when the current span does not record (tracing off or not sampled).
    """
    parent = trace.get_current_span()
    if not parent.is_recording():
        yield trace.INVALID_SPAN
        return
    span = DeferredSpan(name, parent, time.time_ns())
    try:
        yield span
    except GeneratorExit:
        raise
    except BaseException as error:
        span.error = error
        raise
    finally:
        span.end_ns = time.time_ns()
        pending = _pending.get()
        if pending is None:
            span.build()
        else:
            pending.append(span)


@contextmanager
def deferring_leaf_spans(after_rpc: AfterRpc | None = None) -> Iterator[None]:
    """Leaf spans opened inside are built by ``after_rpc``'s callback (``add_callback`` of the
    RPC's ``ServicerContext``: when the RPC has completed) or, without one or once the RPC has
    already ended, as the block exits."""
    pending: list[DeferredSpan] = []
    token = _pending.set(pending)
    try:
        yield
    finally:
        try:
            _pending.reset(token)
        except ValueError:
            pass  # a generator closed from another context: that context never saw the set

        def build_all() -> None:
            for span in pending:
                span.build()

        if after_rpc is None or not after_rpc(build_all):
            build_all()
