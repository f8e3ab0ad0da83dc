"""Domain exceptions, each mapped to one precise gRPC status in a single place.

Services raise these; the server interceptor turns them into a status and a one-line message.
Anything else that escapes is a bug and becomes INTERNAL without a traceback on the wire.
"""

from __future__ import annotations

import grpc


class C2CError(Exception):
    """Base of every error a client may be told about."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL


class BadRequest(C2CError):
    """The request itself is invalid; the message names the field."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class BadStream(C2CError):
    """A KV stream is corrupt, truncated, out of order or disagrees with its header."""

    status = grpc.StatusCode.DATA_LOSS


class WrongModel(C2CError):
    """A peer, checkpoint or cache belongs to another model than the one expected."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class UnsupportedModel(C2CError):
    """A model whose architecture or cache layout the fuser cannot serve."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class FusionInputError(C2CError):
    """Tensors handed to the fuser disagree with it (shape, heads, length, NaN/Inf)."""

    status = grpc.StatusCode.INTERNAL


class PeerUnavailable(C2CError):
    """The sharer could not be reached."""

    status = grpc.StatusCode.UNAVAILABLE


class PeerDeadlineExceeded(C2CError):
    """The sharer did not answer within the request's deadline."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED
