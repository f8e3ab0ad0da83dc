"""The sharer's work: prefill a prompt, align it to the receiver's tokens, stream the KV cache.

Three things run at once for one request, so that the network never waits for a whole cache:
the forward pass (a thread; each decoder layer signals when its KV is in the cache, and the pass
stops after the deepest requested layer), the encoder (a thread; quantizes, compresses and
checksums the requested layers in the requested order as they become ready) and the caller's
iteration, which sends one message while the next is encoded.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from c2c.active_requests import ActiveRequests
from c2c.deferred_spans import AfterRpc, leaf_span
from c2c.errors import BadRequest
from c2c.generation import (
    GenerationResult,
    ModelRunner,
    RequestCancelled,
    SamplingConfig,
    StopRule,
    eos_token_ids,
    generate,
)
from c2c.kv_codec import CodecSpec, KVStreamEncoder, codec_name
from c2c.model_loading import LoadedModel
from c2c.telemetry import rpc_server_span
from fuser.alignment import align_positions
from protos import c2c_pb2

# Messages the encoder may run ahead of the network: bounds memory to a few MiB per request.
_QUEUE_MESSAGES = 8
# How often waiting threads look at the cancellation flag.
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class SharerLimits:
    """What the sharer accepts; values come from its command line."""

    max_prompt_tokens: int = 2048
    max_new_tokens: int = 512
    max_message_bytes: int = 1 << 20
    default_codec: int = c2c_pb2.CODEC_FP16


@dataclass(frozen=True)
class PrefillPlan:
    """A validated Prefill request."""

    text: str
    receiver_spans: tuple[tuple[int, int], ...]
    token_ids: tuple[int, ...]
    alignment: str
    layers: tuple[int, ...]
    spec: CodecSpec


@dataclass(frozen=True)
class TextPlan:
    """A validated GenerateText request."""

    prompt: str
    sampling: SamplingConfig
    max_new_tokens: int
    stop_strings: tuple[str, ...]


class _LayersComplete(Exception):
    """Ends a forward pass early: every requested layer's KV is in the cache."""


class _Canceller:
    """A cancellation flag that threads poll and blocking waits respect."""

    def __init__(self, is_cancelled: Callable[[], bool]) -> None:
        self._flag = threading.Event()
        self._external = is_cancelled

    def set(self) -> None:
        self._flag.set()

    def check(self) -> None:
        if self._flag.is_set() or self._external():
            self._flag.set()
            raise RequestCancelled

    def wait(self, event: threading.Event) -> None:
        while not event.wait(_POLL_SECONDS):
            self.check()


class _LayerStream:
    """Forward and encoder threads of one request, joined to the caller by a bounded queue."""

    def __init__(
        self,
        runner: ModelRunner,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None,
        encoder: KVStreamEncoder,
        layers: tuple[int, ...],
        canceller: _Canceller,
    ) -> None:
        self._runner = runner
        self._input_ids = input_ids
        self._positions = positions
        self._encoder = encoder
        self._layers = layers
        self._last_layer = max(layers)
        self._canceller = canceller
        self._cache = runner.new_cache()
        self._ready = [threading.Event() for _ in range(runner.model.config.num_hidden_layers)]
        self._forward_done = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_MESSAGES)
        self._errors: list[BaseException] = []
        self.prefill_ms = 0.0
        context = contextvars.copy_context()
        self._threads = [
            threading.Thread(target=context.copy().run, args=(self._forward,), daemon=True),
            threading.Thread(target=context.copy().run, args=(self._encode,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _on_layer(self, index: int) -> None:
        self._ready[index].set()
        self._canceller.check()
        if index == self._last_layer:
            raise _LayersComplete

    def _forward(self) -> None:
        start = time.perf_counter()
        with leaf_span("sharer.forward") as span:
            span.set_attributes(
                {
                    "c2c.sharer_tokens": int(self._input_ids.shape[1]),
                    "c2c.layers_run": self._last_layer + 1,
                }
            )
            try:
                self._runner.fill_cache(self._input_ids, self._cache, self._on_layer)
            except _LayersComplete:
                pass  # the deeper layers are not needed: skip their compute
            except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
                self._fail(error)
            finally:
                self.prefill_ms = (time.perf_counter() - start) * 1e3
                self._forward_done.set()
                for event in self._ready:
                    event.set()  # waiters re-check the error list

    def _layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._cache.layers[layer]
        key, value = cached.keys, cached.values
        if self._positions is not None:
            key = key.index_select(2, self._positions)
            value = value.index_select(2, self._positions)
        return key, value

    def _encode(self) -> None:
        with leaf_span("kv.encode") as span:
            span.set_attribute("c2c.codec", codec_name(self._encoder.spec.codec))
            try:
                for layer in self._layers:
                    self._canceller.wait(self._ready[layer])
                    if self._errors:
                        return
                    before = self._encoder.encoded_bytes
                    raw_before = self._encoder.raw_bytes
                    key, value = self._layer_kv(layer)
                    for message in self._encoder.encode_layer(layer, key, value):
                        self._put(message)
                    span.add_event(
                        "layer",
                        {
                            "c2c.layer": layer,
                            "c2c.raw_bytes": self._encoder.raw_bytes - raw_before,
                            "c2c.encoded_bytes": self._encoder.encoded_bytes - before,
                        },
                    )
                self._canceller.wait(self._forward_done)
                span.set_attributes(
                    {
                        "c2c.raw_bytes": self._encoder.raw_bytes,
                        "c2c.encoded_bytes": self._encoder.encoded_bytes,
                        "c2c.encode_ms": self._encoder.encode_ms,
                    }
                )
                self._put(None)
            except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
                self._fail(error)

    def _fail(self, error: BaseException) -> None:
        self._canceller.set()
        self._errors.append(error)

    def _put(self, item) -> None:
        while True:
            self._canceller.check()
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def messages(self) -> Iterator:
        """Encoded messages in stream order; raises what a worker thread raised."""
        while True:
            try:
                item = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._errors:
                    raise self._errors[0] from None
                self._canceller.check()
                continue
            if item is None:
                return
            yield item

    def close(self) -> None:
        """Stop both threads and drop the cache (called on success, error and cancellation)."""
        self._canceller.set()
        for thread in self._threads:
            thread.join()
        self._cache = DynamicCache()


class SharerPrefill:
    """The sharer model and the two things it does for receivers: Prefill and GenerateText."""

    def __init__(self, loaded: LoadedModel, limits: SharerLimits) -> None:
        self.loaded = loaded
        self.limits = limits
        self.runner = ModelRunner(loaded.model)
        self._eos = eos_token_ids(loaded.model, loaded.tokenizer)
        self._requests = ActiveRequests()

    @property
    def active_requests(self) -> int:
        """Requests still holding model work or tensors (0 once every stream is released)."""
        return self._requests.count

    def _check_length(self, tokens: int, what: str) -> None:
        if tokens > self.limits.max_prompt_tokens:
            raise BadRequest(
                f"{what}: {tokens} tokens exceeds the sharer limit {self.limits.max_prompt_tokens}"
            )

    def _aligned_inputs(self, plan: PrefillPlan) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids the sharer prefills and, when they differ from 0..N-1, which of its
        positions answers each receiver token."""
        if plan.alignment == "identity" and not plan.receiver_spans:
            ids, positions = list(plan.token_ids), list(range(len(plan.token_ids)))
        else:
            ids, positions = align_positions(
                plan.alignment,
                plan.text,
                plan.receiver_spans,
                self.loaded.tokenizer,
                plan.token_ids or None,
            )
        vocab = self.loaded.model.config.vocab_size
        if max(ids) >= vocab:
            raise BadRequest(f"token_ids: id {max(ids)} is outside the vocabulary of {vocab}")
        self._check_length(len(ids), "text" if plan.text else "token_ids")
        if positions == list(range(len(ids))):
            return torch.tensor([ids]), None
        return torch.tensor([ids]), torch.tensor(positions, device=self.runner.device)

    def stream(
        self,
        plan: PrefillPlan,
        is_cancelled: Callable[[], bool],
        after_rpc: AfterRpc | None = None,
    ) -> Iterator:
        """Header, the requested layers in order, trailer; stops as soon as ``is_cancelled``.

        ``after_rpc`` (the RPC's ``add_callback``) builds the leaf spans once the stream is over.
        """
        start = time.perf_counter()
        self._requests.add(+1)
        canceller = _Canceller(is_cancelled)
        layer_stream = None
        with rpc_server_span("sharer.prefill", after_rpc) as span:
            try:
                input_ids, positions = self._aligned_inputs(plan)
                tokenize_ms = (time.perf_counter() - start) * 1e3
                card = self.loaded.card
                num_positions = int(input_ids.shape[1]) if positions is None else len(positions)
                span.set_attributes(
                    {
                        "c2c.alignment": plan.alignment,
                        "c2c.codec": codec_name(plan.spec.codec),
                        "c2c.positions": num_positions,
                        "c2c.sharer_tokens": int(input_ids.shape[1]),
                        "c2c.layers": list(plan.layers),
                    }
                )
                encoder = KVStreamEncoder(
                    plan.spec,
                    model_fingerprint=card.model_fingerprint,
                    num_layers=card.num_layers,
                    layers=plan.layers,
                    num_kv_heads=card.num_kv_heads,
                    head_dim=card.head_dim,
                    num_positions=num_positions,
                    source_dtype=card.dtype,
                )
                yield encoder.header()
                layer_stream = _LayerStream(
                    self.runner, input_ids, positions, encoder, plan.layers, canceller
                )
                yield from layer_stream.messages()
                span.set_attributes(
                    {"c2c.encoded_bytes": encoder.encoded_bytes, "c2c.messages": encoder.messages}
                )
                yield encoder.trailer(
                    tokenize_ms=tokenize_ms,
                    prefill_ms=layer_stream.prefill_ms,
                    total_ms=(time.perf_counter() - start) * 1e3,
                    sharer_tokens=int(input_ids.shape[1]),
                )
            except RequestCancelled:
                span.add_event("cancelled")
            finally:
                if layer_stream is not None:
                    layer_stream.close()
                self._requests.add(-1)

    def generate_text(
        self, plan: TextPlan, is_cancelled: Callable[[], bool]
    ) -> tuple[GenerationResult, int]:
        """Plain generation for the text-to-text baseline; also returns the prompt's tokens."""
        self._requests.add(+1)
        try:
            ids = self.loaded.tokenizer(plan.prompt, return_tensors="pt").input_ids
            self._check_length(int(ids.shape[1]), "prompt")
            result = GenerationResult()
            stop = StopRule(plan.max_new_tokens, self._eos, plan.stop_strings)
            for _ in generate(
                self.runner,
                self.loaded.tokenizer,
                self.runner.new_cache(),
                ids,
                plan.sampling,
                stop,
                result,
                is_cancelled,
            ):
                pass
            return result, int(ids.shape[1])
        finally:
            self._requests.add(-1)
