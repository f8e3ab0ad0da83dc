"""Run each layer's projection and gated fusion from captured CUDA graphs, one per length bucket.

Launch overhead dominates a per-layer projector at short prompts, so on CUDA every fused layer is
captured once at start-up per sequence-length bucket, with static input buffers shared by all
graphs of a bucket and one memory pool shared by all graphs. A request copies its tensors into
the smallest bucket that fits (zero-padded), replays, and copies the first N positions out.
The projector is position-wise (linear layers and norms over features only), so padding cannot
change the valid positions' results.

Sequences longer than the largest bucket, other batch sizes, and CPU runs use the eager path:
the fuser itself. `mode="bucketed_eager"` runs the same padded static-buffer code without graphs,
which is how CPU tests check the bucket and padding logic the graphs rely on.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from fuser.fuser import C2CFuser, fuse_cache_layers

DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048)
MODES = ("auto", "graphs", "bucketed_eager", "eager")


@dataclass
class _BucketBuffers:
    """Static inputs of one bucket, shared by every layer's graph for that bucket."""

    k_r: Tensor
    v_r: Tensor
    k_s: Tensor
    v_s: Tensor


class FusionGraphRunner:
    """C2CFuser's `fuse_layer`/`fuse_cache` contract, served from CUDA graphs where possible."""

    def __init__(
        self,
        fuser: C2CFuser,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        batch: int = 1,
        mode: str = "auto",
        warmup_iterations: int = 2,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown runner mode {mode!r}; expected one of {MODES}")
        if not buckets or any(b < 1 for b in buckets):
            raise ValueError(f"buckets must be positive lengths, got {list(buckets)}")
        self.fuser = fuser.eval()
        parameter = next(fuser.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        if mode == "auto":
            mode = "graphs" if self.device.type == "cuda" else "eager"
        if mode == "graphs" and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the fuser on a CUDA device")
        self.mode = mode
        self.buckets = tuple(sorted(set(buckets)))
        self.batch = batch
        # Inference gates are fixed once the fuser is loaded; read them once, outside any graph.
        self.gates = {layer: fuser.hard_gates(layer) for layer in fuser.fused_receiver_layers()}
        self._buffers: dict[int, _BucketBuffers] = {}
        self._outputs: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        # Every request shares the static buffers and outputs: one copy-replay-copy at a time.
        self._buffers_lock = threading.Lock()
        if mode != "eager":
            self._buffers = {bucket: self._allocate(bucket) for bucket in self.buckets}
        if mode == "graphs":
            self._capture_all(warmup_iterations)

    def _allocate(self, bucket: int) -> _BucketBuffers:
        receiver, sharer = self.fuser.config.receiver, self.fuser.config.sharer

        def zeros(heads: int, head_dim: int) -> Tensor:
            shape = (self.batch, heads, bucket, head_dim)
            return torch.zeros(shape, device=self.device, dtype=self.dtype)

        return _BucketBuffers(
            k_r=zeros(receiver.num_kv_heads, receiver.head_dim),
            v_r=zeros(receiver.num_kv_heads, receiver.head_dim),
            k_s=zeros(sharer.num_kv_heads, sharer.head_dim),
            v_s=zeros(sharer.num_kv_heads, sharer.head_dim),
        )

    def _step(self, layer: int, buffers: _BucketBuffers) -> tuple[Tensor, Tensor]:
        """The captured computation: one layer's projector on a bucket's static inputs."""
        projector = self.fuser.projectors[str(layer)]
        return projector(buffers.k_r, buffers.v_r, buffers.k_s, buffers.v_s, temperature=1.0)

    @torch.no_grad()
    def _capture_all(self, warmup_iterations: int) -> None:
        pool = torch.cuda.graph_pool_handle()
        side_stream = torch.cuda.Stream(device=self.device)
        side_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side_stream):
            for buffers in self._buffers.values():
                for layer in self.gates:
                    for _ in range(warmup_iterations):
                        self._step(layer, buffers)
        torch.cuda.current_stream(self.device).wait_stream(side_stream)
        for bucket, buffers in self._buffers.items():
            for layer in self.gates:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._outputs[(layer, bucket)] = self._step(layer, buffers)
                self._graphs[(layer, bucket)] = graph
        torch.cuda.synchronize(self.device)

    def bucket_for(self, length: int) -> int | None:
        """The smallest bucket holding length positions, or None (eager) when none does."""
        return next((bucket for bucket in self.buckets if bucket >= length), None)

    @torch.no_grad()
    def fuse_layer(
        self, receiver_layer: int, k_r: Tensor, v_r: Tensor, k_s: Tensor, v_s: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Like C2CFuser.fuse_layer: gated residual fusion, a closed path returned as given."""
        if self.mode == "eager" or receiver_layer not in self.gates:
            return self.fuser.fuse_layer(receiver_layer, k_r, v_r, k_s, v_s)
        self.fuser.check_inputs(receiver_layer, k_r, v_r, k_s, v_s)
        length = k_r.shape[2]
        bucket = self.bucket_for(length)
        if bucket is None or k_r.shape[0] != self.batch:
            return self.fuser.fuse_layer(receiver_layer, k_r, v_r, k_s, v_s)
        with self._buffers_lock:
            return self._fuse_in_bucket(receiver_layer, bucket, k_r, v_r, k_s, v_s)

    def _fuse_in_bucket(
        self, receiver_layer: int, bucket: int, k_r: Tensor, v_r: Tensor, k_s: Tensor, v_s: Tensor
    ) -> tuple[Tensor, Tensor]:
        length = k_r.shape[2]
        buffers = self._buffers[bucket]
        for static, given in (
            (buffers.k_r, k_r),
            (buffers.v_r, v_r),
            (buffers.k_s, k_s),
            (buffers.v_s, v_s),
        ):
            static[:, :, :length].copy_(given)
            static[:, :, length:].zero_()
        if self.mode == "graphs":
            self._graphs[(receiver_layer, bucket)].replay()
            k_out, v_out = self._outputs[(receiver_layer, bucket)]
        else:
            k_out, v_out = self._step(receiver_layer, buffers)
        # Outputs live in the shared pool and are overwritten by the next replay: copy them out.
        key_on, value_on = self.gates[receiver_layer]
        k_new = k_out[:, :, :length].to(k_r.dtype, copy=True) if key_on else k_r
        v_new = v_out[:, :, :length].to(v_r.dtype, copy=True) if value_on else v_r
        return k_new, v_new

    def fuse_cache(
        self, receiver_cache: DynamicCache, sharer_kv: Mapping[int, tuple[Tensor, Tensor]]
    ) -> DynamicCache:
        """Like C2CFuser.fuse_cache, each open layer through this runner's `fuse_layer`."""
        return fuse_cache_layers(self.fuser, self.fuse_layer, receiver_cache, sharer_kv)
