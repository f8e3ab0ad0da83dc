"""The receiver's side of the Sharer service: Describe, GenerateText and the streaming Prefill.

A Prefill stream is read and decoded on a background thread (``KVTransfer``) so that the receiver's
own prefill runs meanwhile; decoded layers wait in a queue in stream order. gRPC failures become
the domain errors the receiver's fallback rules are written in.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from contextlib import closing
from dataclasses import dataclass

import grpc
from opentelemetry import trace

from c2c.deferred_spans import leaf_span
from c2c.errors import (
    BadRequest,
    BadStream,
    C2CError,
    PeerDeadlineExceeded,
    PeerUnavailable,
    WrongModel,
)
from c2c.kv_codec import ExpectedShape, KVStreamDecoder
from c2c.telemetry import intercept_client_channel
from protos import c2c_pb2, c2c_pb2_grpc

# ``network.transfer`` is a live span, started, not made current (attaching a context costs every
# request): the Prefill call's CLIENT span, whose context goes to the sharer, is its child.
tracer = trace.get_tracer(__name__)

_MAX_MESSAGE_BYTES = 64 << 20
LB_POLICIES = ("pick_first", "round_robin")
_END = object()


def peer_error(error: grpc.RpcError, target: str, what: str) -> C2CError:
    """The domain error for a failed call to the sharer at ``target``."""
    code, details = error.code(), error.details() or ""
    message = f"sharer {target}: {what} failed: {code.name}: {details}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PeerDeadlineExceeded(message)
    if code == grpc.StatusCode.DATA_LOSS:
        return BadStream(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return BadRequest(message)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return WrongModel(message)
    return PeerUnavailable(message)


@dataclass
class TransferStats:
    """What one Prefill stream cost, as the receiver measured it."""

    bytes_on_wire: int = 0
    messages: int = 0
    layers: int = 0
    raw_bytes: int = 0
    transfer_ms: float = 0.0
    blocked_ms: float = 0.0
    decode_ms: float = 0.0
    sharer_prefill_ms: float = 0.0


class KVTransfer:
    """One Prefill stream received on a background thread; ``next_layer`` hands out its layers."""

    def __init__(
        self,
        channel: grpc.Channel,
        call,
        decoder: KVStreamDecoder,
        target: str,
        span: trace.Span,
        started: float,
    ) -> None:
        self._channel = channel
        self._call = call
        self._decoder = decoder
        self._target = target
        self._span = span
        self._started = started
        self._layers: queue.Queue = queue.Queue()
        self.stats = TransferStats()
        self._finished = threading.Event()
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._receive,), daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        decoder = self._decoder
        try:
            # The call is closed here, not left to the garbage collector: an abandoned stream
            # (a bad message) would otherwise end its CLIENT span on whichever thread collects
            # it, detaching a context that thread never attached.
            with trace.use_span(self._span, end_on_exit=False), closing(self._call) as messages:
                # The first read starts the RPC, so its client span is a child of this one.
                first = next(messages, None)
                with leaf_span("kv.decode") as decode_span:
                    try:
                        if first is not None:
                            self._decode(first, decode_span)
                        for message in messages:
                            self._decode(message, decode_span)
                        decoder.finish()
                    finally:
                        decode_span.set_attributes(
                            {
                                "c2c.layers": self.stats.layers,
                                "c2c.raw_bytes": self.stats.raw_bytes,
                                "c2c.decode_ms": self.stats.decode_ms,
                            }
                        )
            self.stats.sharer_prefill_ms = decoder.trailer.prefill_ms
            self._layers.put(_END)
        except grpc.RpcError as error:
            self._layers.put(peer_error(error, self._target, "Prefill"))
        except Exception as error:  # noqa: BLE001 - handed to the request's thread
            self._layers.put(error)
        finally:
            self._channel.close()  # ends the call if it is still open (a bad stream)
            self.stats.transfer_ms = (time.perf_counter() - self._started) * 1e3
            self.stats.bytes_on_wire = decoder.encoded_bytes
            self.stats.messages = decoder.messages
            self._finish_span()
            self._finished.set()

    def _decode(self, message: c2c_pb2.KVMessage, decode_span: trace.Span) -> None:
        start = time.perf_counter()
        layer = self._decoder.feed(message)
        self.stats.decode_ms += (time.perf_counter() - start) * 1e3
        if layer is not None:
            self.stats.layers += 1
            raw = layer.key.nbytes + layer.value.nbytes
            self.stats.raw_bytes += raw
            decode_span.add_event("layer", {"c2c.layer": layer.layer, "c2c.raw_bytes": raw})
            self._layers.put(layer)

    def _finish_span(self) -> None:
        self._span.set_attributes(
            {
                "c2c.bytes_on_wire": self.stats.bytes_on_wire,
                "c2c.messages": self.stats.messages,
                "c2c.layers": self.stats.layers,
                "c2c.blocked_ms": self.stats.blocked_ms,
            }
        )
        self._span.end()

    PENDING = object()
    """What ``next_layer`` returns when nothing arrived within its timeout."""

    def next_layer(self, timeout_s: float | None = None):
        """The next decoded layer, None after the trailer, ``PENDING`` after ``timeout_s`` with
        nothing new; raises the stream's domain error."""
        start = time.perf_counter()
        try:
            item = self._layers.get(timeout=timeout_s)
        except queue.Empty:
            item = self.PENDING
        finally:
            self.stats.blocked_ms += (time.perf_counter() - start) * 1e3
        if item is _END:
            return None
        if isinstance(item, BaseException):
            self._span.record_exception(item)
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, str(item)))
            raise item
        return item

    def cancel(self) -> None:
        """Stop the stream (the sharer sees a cancelled RPC) and wait for the reader to end."""
        self._channel.close()
        self._finished.wait()


class SharerClient:
    """Calls to one sharer; thread-safe, shared by every request of the receiver.

    Each Prefill stream gets a channel of its own so that closing it cancels exactly that stream
    (the traced call is a generator without ``cancel``); channels to one target share their
    connection through gRPC's global subchannel pool, so this costs no handshake.
    """

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None = None,
        lb_policy: str = "pick_first",
    ) -> None:
        if lb_policy not in LB_POLICIES:
            raise ValueError(f"sharer load balancing {lb_policy!r}: expected one of {LB_POLICIES}")
        self.target = target
        self._credentials = credentials
        self._options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.lb_policy_name", lb_policy),
            # A Describe on a channel that is waiting out a reconnect backoff fails at once, so
            # a receiver that started before its sharer would keep answering UNAVAILABLE for up
            # to gRPC's default 120 s backoff after the sharer came up; retry every second.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self._channel = self._new_channel()
        self._stub = c2c_pb2_grpc.SharerStub(intercept_client_channel(self._channel))

    def _new_channel(self) -> grpc.Channel:
        if self._credentials is None:
            return grpc.insecure_channel(self.target, options=self._options)
        return grpc.secure_channel(self.target, self._credentials, options=self._options)

    def close(self) -> None:
        self._channel.close()

    def describe(self, timeout_s: float) -> c2c_pb2.ModelCard:
        """The sharer's model card."""
        try:
            return self._stub.Describe(c2c_pb2.DescribeRequest(), timeout=timeout_s)
        except grpc.RpcError as error:
            raise peer_error(error, self.target, "Describe") from None

    def generate_text(self, prompt: str, max_new_tokens: int, timeout_s: float) -> tuple[str, int]:
        """The sharer's greedy answer to ``prompt``, and the bytes of text received."""
        request = c2c_pb2.GenerateTextRequest(prompt=prompt, max_new_tokens=max_new_tokens)
        try:
            reply = self._stub.GenerateText(request, timeout=timeout_s)
        except grpc.RpcError as error:
            raise peer_error(error, self.target, "GenerateText") from None
        return reply.text, len(reply.text.encode())

    def open_prefill(
        self,
        request: c2c_pb2.PrefillRequest,
        timeout_s: float,
        expected: ExpectedShape,
    ) -> KVTransfer:
        """Start a Prefill stream (``request.max_message_bytes`` must be set: the decoder holds
        the sharer to it); its ``network.transfer`` span ends with the stream."""
        started = time.perf_counter()
        span = tracer.start_span("network.transfer")
        channel = self._new_channel()
        stub = c2c_pb2_grpc.SharerStub(intercept_client_channel(channel))
        call = stub.Prefill(request, timeout=timeout_s)
        decoder = KVStreamDecoder(
            list(request.layers),
            max_message_bytes=request.max_message_bytes,
            expected=expected,
        )
        return KVTransfer(channel, call, decoder, self.target, span, started)
