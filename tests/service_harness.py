"""Real sharer and receiver servers on 127.0.0.1 (port 0) around the tiny models, for tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import torch

from c2c.model_loading import read_dims
from fuser.checkpoint import save_checkpoint
from fuser.fuser import C2CFuser, FuserConfig
from fuser.projector import ProjectorConfig
from protos import c2c_pb2_grpc
from receiver_service.server import ReceiverServer
from receiver_service.server import serve as serve_receiver
from sharer_service.server import SharerServer
from sharer_service.server import serve as serve_sharer


def random_fuser(
    receiver_dir: Path, sharer_dir: Path, *, seed: int = 0, gate_logit: float = 1.0
) -> C2CFuser:
    """A seeded, untrained fuser for the pair; ``gate_logit`` <= 0 closes every gate."""
    torch.manual_seed(seed)
    config = FuserConfig(
        receiver=read_dims(receiver_dir),
        sharer=read_dims(sharer_dir),
        projector=ProjectorConfig(hidden_size=32, gate_init_logit=gate_logit),
    )
    return C2CFuser(config).eval()


def save_random_fuser(receiver_dir: Path, sharer_dir: Path, out: Path, **kwargs) -> Path:
    return save_checkpoint(random_fuser(receiver_dir, sharer_dir, **kwargs), out)


def start_sharer(model_dir: Path, port: int = 0, **options) -> SharerServer:
    return serve_sharer(model_dir, host="127.0.0.1", port=port, wait=False, **options)


def start_receiver(model_dir: Path, fuser_dir: Path, sharer_port: int, **options) -> ReceiverServer:
    return serve_receiver(
        model_dir,
        fuser_dir,
        f"127.0.0.1:{sharer_port}",
        host="127.0.0.1",
        port=0,
        wait=False,
        **options,
    )


def receiver_stub(port: int) -> c2c_pb2_grpc.ReceiverStub:
    return c2c_pb2_grpc.ReceiverStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def sharer_stub(port: int) -> c2c_pb2_grpc.SharerStub:
    return c2c_pb2_grpc.SharerStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


class ProxySharer(c2c_pb2_grpc.SharerServicer):
    """A sharer in front of a real one that can be slow or flip a byte of the KV stream.

    Upstream failures are passed on as the upstream status, as a real sharer would answer.
    """

    def __init__(self, target_port: int, delay_s: float = 0.0, flip_byte: bool = False) -> None:
        self.real = sharer_stub(target_port)
        self.delay_s = delay_s
        self.flip_byte = flip_byte

    def Describe(self, request, context):
        with upstream_status(context):
            return self.real.Describe(request)

    def GenerateText(self, request, context):
        time.sleep(self.delay_s)
        with upstream_status(context):
            return self.real.GenerateText(request)

    def Prefill(self, request, context):
        time.sleep(self.delay_s)
        if not context.is_active():
            return
        flipped = False
        with upstream_status(context):
            for message in self.real.Prefill(request):
                if self.flip_byte and not flipped and message.HasField("piece"):
                    data = bytearray(message.piece.data)
                    data[len(data) // 2] ^= 0x01
                    message.piece.data = bytes(data)
                    flipped = True
                yield message


@contextmanager
def upstream_status(context: grpc.ServicerContext) -> Iterator[None]:
    """Abort the proxied RPC with the status the real sharer's call failed with."""
    try:
        yield
    except grpc.RpcError as error:
        context.abort(error.code(), error.details())


def start_proxy(proxy: ProxySharer) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    c2c_pb2_grpc.add_SharerServicer_to_server(proxy, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port
