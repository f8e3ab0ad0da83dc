"""Errors at the gRPC boundary: exceptions map to statuses (domain errors to theirs, bugs to a
bare INTERNAL), and a port already taken is refused at start-up."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from c2c.errors import BadStream, PeerDeadlineExceeded
from c2c.grpc_errors import INTERNAL_MESSAGE, ErrorStatusInterceptor
from c2c.grpc_server import start_grpc_server
from protos import c2c_pb2, c2c_pb2_grpc


class FailingSharer(c2c_pb2_grpc.SharerServicer):
    def Describe(self, request, context):
        raise RuntimeError("secret detail /srv/model at 0x7f")

    def GenerateText(self, request, context):
        raise BadStream("layer 3: key data payload CRC-32 mismatch")

    def Prefill(self, request, context):
        yield c2c_pb2.KVMessage(header=c2c_pb2.KVHeader(num_layers=1))
        if request.layers:
            raise PeerDeadlineExceeded("sharer too slow")
        raise KeyError("secret key")


@pytest.fixture(scope="module")
def stub():
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), interceptors=[ErrorStatusInterceptor()]
    )
    c2c_pb2_grpc.add_SharerServicer_to_server(FailingSharer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield c2c_pb2_grpc.SharerStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    server.stop(0).wait()


def status_of(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_unexpected_error_is_internal_without_any_detail(stub, caplog) -> None:
    error = status_of(lambda: stub.Describe(c2c_pb2.DescribeRequest(), timeout=10))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == INTERNAL_MESSAGE
    assert "secret detail" in caplog.text  # logged on the server side, with its traceback


def test_domain_error_gets_its_status_and_one_line(stub) -> None:
    error = status_of(lambda: stub.GenerateText(c2c_pb2.GenerateTextRequest(), timeout=10))
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert error.details() == "layer 3: key data payload CRC-32 mismatch"


def test_stream_errors_after_messages_keep_the_messages_and_the_status(stub) -> None:
    received = []
    error = status_of(
        lambda: received.extend(stub.Prefill(c2c_pb2.PrefillRequest(layers=[0]), timeout=10))
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details() == "sharer too slow" and len(received) == 1
    error = status_of(lambda: list(stub.Prefill(c2c_pb2.PrefillRequest(), timeout=10)))
    assert error.code() == grpc.StatusCode.INTERNAL and "secret" not in error.details()


def test_a_taken_port_is_refused_naming_the_address() -> None:
    first = start_grpc_server([], host="127.0.0.1", port=0, max_workers=1)
    try:
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{first.port}"):
            start_grpc_server([], host="127.0.0.1", port=first.port, max_workers=1)
    finally:
        first.stop(0)
