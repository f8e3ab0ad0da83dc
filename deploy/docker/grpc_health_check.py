"""Ask a server's standard gRPC health service whether it is SERVING; exit 0 if so, 1 if not.

The images' HEALTHCHECK runs this (Docker has no native gRPC check). The address comes from the
command line or, as in a container, from C2C_HEALTH_PORT / C2C_PORT, so one image line serves
both the sharer and the receiver.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def default_address() -> str:
    port = os.environ.get("C2C_HEALTH_PORT") or os.environ.get("C2C_PORT") or "50051"
    return f"127.0.0.1:{port}"


def check(address: str, service: str, timeout_s: float) -> tuple[bool, str]:
    """One Check call; returns (serving, a line saying what was seen)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            return False, f"{address}: {error.code().name}: {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default=default_address(), help="HOST:PORT of the server")
    parser.add_argument("--service", default="", help="health service name ('' = the server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for a reply")
    args = parser.parse_args(argv)
    serving, line = check(args.addr, args.service, args.timeout)
    print(line)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
