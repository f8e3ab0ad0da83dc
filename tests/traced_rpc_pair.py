"""Two processes that talk gRPC with c2c.telemetry set up, for telemetry tests.

``python -m tests.traced_rpc_pair server`` serves Sharer.Describe through the telemetry server
interceptor, names its SERVER span ``sharer.prefill`` and opens ``sharer.forward`` / ``kv.encode``
inside it, as the sharer does; it prints its port and serves until stdin closes.
``python -m tests.traced_rpc_pair client PORT [TRACEPARENT]`` opens ``receiver.generate`` and
calls it through the telemetry client interceptor, or, given a W3C ``traceparent``, calls with
that header on a plain channel, as a foreign caller would. Each process exports as its ``OTEL_*``
environment says, like the real services.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry import trace

from c2c.telemetry import (
    current_trace_id,
    grpc_server_interceptor,
    intercept_client_channel,
    record_request,
    rpc_server_span,
    setup_telemetry,
)
from protos import c2c_pb2, c2c_pb2_grpc

tracer = trace.get_tracer(__name__)
REPO = Path(__file__).resolve().parents[1]


class TracedDescribe(c2c_pb2_grpc.SharerServicer):
    def Describe(self, request, context):  # noqa: N802 (gRPC method name)
        with rpc_server_span("sharer.prefill") as span:
            span.set_attribute("c2c.layers", 2)
            with tracer.start_as_current_span("sharer.forward"):
                time.sleep(0.01)
            with tracer.start_as_current_span("kv.encode") as span:
                span.set_attribute("c2c.encoded_bytes", 4096)
                time.sleep(0.005)
        return c2c_pb2.ModelCard(model_name="demo", num_layers=2)


def serve() -> None:
    telemetry = setup_telemetry("demo-sharer", model_name="demo")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), interceptors=[grpc_server_interceptor()]
    )
    c2c_pb2_grpc.add_SharerServicer_to_server(TracedDescribe(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(grace=None)
    telemetry.shutdown()


def call(port: int, traceparent: str | None) -> None:
    telemetry = setup_telemetry("demo-receiver", model_name="demo")
    target = f"127.0.0.1:{port}"
    if traceparent:
        with grpc.insecure_channel(target) as channel:
            c2c_pb2_grpc.SharerStub(channel).Describe(
                c2c_pb2.DescribeRequest(), metadata=[("traceparent", traceparent)], timeout=10
            )
    else:
        with tracer.start_as_current_span("receiver.generate", attributes={"c2c.mode": "c2c"}):
            print(current_trace_id(), flush=True)
            with tracer.start_as_current_span("receiver.tokenize"):
                time.sleep(0.002)
            with intercept_client_channel(grpc.insecure_channel(target)) as channel:
                c2c_pb2_grpc.SharerStub(channel).Describe(c2c_pb2.DescribeRequest(), timeout=10)
            with tracer.start_as_current_span("decoding", attributes={"c2c.new_tokens": 4}):
                time.sleep(0.003)
        record_request("c2c", "ok", 20.0, transfer_ms=5.0, fusion_ms=1.0, bytes_on_wire=4096)
    telemetry.shutdown()


def run_traced_pair(
    server_env: dict[str, str], client_env: dict[str, str], traceparent: str = ""
) -> str:
    """Run tests.traced_rpc_pair's server and one client call; the client's stdout."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.traced_rpc_pair", "server"],
        env=server_env,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = server.stdout.readline().strip()
        assert port.isdigit(), f"server did not start (printed {port!r})"
        client = subprocess.run(
            [sys.executable, "-m", "tests.traced_rpc_pair", "client", port]
            + ([traceparent] if traceparent else []),
            env=client_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client.returncode == 0, client.stderr
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    return client.stdout


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    else:
        call(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
