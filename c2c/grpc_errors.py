"""One server interceptor that turns exceptions into gRPC statuses for both services.

Domain errors (``c2c.errors.C2CError``) become their own status with their one-line message.
Anything else is a bug: it is logged here with its traceback and the client only sees INTERNAL
with a generic message, so no traceback or internal detail ever crosses the wire.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from c2c.errors import C2CError

_logger = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error (logged on the server)"


# What a unary handler "returns" after its status was set; serialized as nothing.
_NO_REPLY = object()


def _fail_with(error: Exception, context: grpc.ServicerContext, method: str) -> None:
    """Set the status ``error`` deserves on the RPC (without raising: an abort would raise a bare
    Exception that tracing records, with a formatted traceback, on every bad request)."""
    if isinstance(error, C2CError):
        _logger.info("%s -> %s: %s", method, error.status.name, error)
        context.set_code(error.status)
        context.set_details(str(error) or type(error).__name__)
        return
    _logger.exception("%s failed with an unexpected error", method)
    context.set_code(grpc.StatusCode.INTERNAL)
    context.set_details(INTERNAL_MESSAGE)


def _wrap_unary(behavior: Callable, method: str) -> Callable:
    def handle(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request_or_iterator, context)
        except Exception as error:  # noqa: BLE001 - this is the one place that maps them all
            if context.code() is not None:
                raise  # the handler aborted with a status of its own
            _fail_with(error, context, method)
            return _NO_REPLY

    return handle


def _wrap_stream(behavior: Callable, method: str) -> Callable:
    def handle(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request_or_iterator, context)
        except Exception as error:  # noqa: BLE001 - this is the one place that maps them all
            if context.code() is not None:
                raise  # the handler aborted with a status of its own
            _fail_with(error, context, method)

    return handle


def _serializer(serialize: Callable | None) -> Callable:
    def serialize_reply(reply: Any) -> bytes:
        if reply is _NO_REPLY:
            return b""
        return serialize(reply) if serialize is not None else reply

    return serialize_reply


class ErrorStatusInterceptor(grpc.ServerInterceptor):
    """Maps exceptions escaping any handler of the server to a precise status and message."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": _serializer(handler.response_serializer),
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method), **codec
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method), **codec
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method), **codec
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, method), **codec
        )
