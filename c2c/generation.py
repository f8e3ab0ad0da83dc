"""The decode loop both services run: next token from logits, stop rules, text deltas.

The caller prefills; this module takes the cache and the input that produces the first new token,
so the same loop serves a plain prefill, a fused C2C cache and the sharer's text baseline.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from c2c.errors import BadRequest

# A decoded text that ends in the replacement character is mid-way through a multi-byte
# character; it is held back until the next token completes it.
_INCOMPLETE_CHARACTER = "\ufffd"


class RequestCancelled(Exception):
    """The client went away or its deadline passed: the work is dropped and nobody is told."""


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen: greedy when ``temperature`` is 0."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @classmethod
    def from_request(cls, temperature: float, top_p: float, seed: int) -> SamplingConfig:
        """Sampling fields as requests carry them (top_p 0 = 1.0); BadRequest names a bad one."""
        if math.isnan(temperature) or temperature < 0:
            raise BadRequest(f"temperature: must be >= 0, got {temperature}")
        if math.isnan(top_p) or not 0 <= top_p <= 1:
            raise BadRequest(f"top_p: must be in (0, 1] (0 means 1.0), got {top_p}")
        return cls(temperature=temperature, top_p=top_p or 1.0, seed=seed)


@dataclass(frozen=True)
class StopRule:
    """When generation ends: end-of-sequence tokens, a token budget, or a stop string."""

    max_new_tokens: int
    eos_token_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()


def checked_stop_strings(stop: list[str]) -> tuple[str, ...]:
    """A request's stop strings; an empty one would stop before the first token."""
    for index, text in enumerate(stop):
        if not text:
            raise BadRequest(f"stop[{index}]: must not be empty")
    return tuple(stop)


@dataclass(frozen=True)
class TextDelta:
    """Text and tokens added by one decode step (text may lag tokens by a partial character)."""

    text: str
    token_ids: tuple[int, ...]


@dataclass
class GenerationResult:
    """What a finished decode loop produced and how long it took."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    decode_ms: float = 0.0
    time_to_first_token_ms: float = 0.0


class ModelRunner:
    """A causal LM shared by concurrent requests; one forward pass at a time.

    Each request owns its cache, so requests interleave step by step; the lock keeps two forward
    passes from competing for the same device (and HF modules from any shared mutable state).
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self._lock = threading.Lock()

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        """Run ``input_ids`` [1, T] on top of ``cache`` (extended in place); last logits [1, V]."""
        with self._lock:
            output = self.model(
                input_ids=input_ids.to(self.device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return output.logits[:, -1, :].float()

    @torch.inference_mode()
    def fill_cache(
        self,
        input_ids: torch.Tensor,
        cache: DynamicCache,
        on_layer: Callable[[int], None] | None = None,
    ) -> None:
        """Prefill ``cache`` without the LM head; ``on_layer(i)`` runs as soon as layer i's KV
        is in the cache (it may raise to abandon the pass)."""
        decoder = self.model.get_decoder()
        with self._lock:
            hooks = []
            if on_layer is not None:
                hooks = [
                    layer.register_forward_hook(lambda *_, index=index: on_layer(index))
                    for index, layer in enumerate(decoder.layers)
                ]
            try:
                decoder(input_ids=input_ids.to(self.device), cache=cache, use_cache=True)
            finally:
                for hook in hooks:
                    hook.remove()

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Every id that ends a sequence for this model: the tokenizer's and the generation config's."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(int(token) for token in source)
    return frozenset(ids)


def choose_token(
    logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None
) -> int:
    """Greedy argmax, or a sample from the temperature-scaled nucleus of ``logits`` [1, V]."""
    if sampling.temperature == 0:
        return int(logits.argmax(dim=-1).item())
    probs = torch.softmax(logits / sampling.temperature, dim=-1)[0]
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs
        sorted_probs[before >= sampling.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator).item())


def _held_back(text: str, stop_strings: tuple[str, ...]) -> int:
    """Characters at the end of ``text`` that might still become a stop string or a character."""
    if text.endswith(_INCOMPLETE_CHARACTER):
        return 1
    longest = 0
    for stop in stop_strings:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest


def generate(
    runner: ModelRunner,
    tokenizer: PreTrainedTokenizerBase,
    cache: DynamicCache,
    next_input: torch.Tensor,
    sampling: SamplingConfig,
    stop: StopRule,
    result: GenerationResult,
    is_cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[TextDelta]:
    """Decode from ``cache``: ``next_input`` [1, T] yields the first new token's logits.

    Yields one delta per step that adds text (or tokens); fills ``result`` as it goes, so a caller
    that stops iterating early still holds what was produced.
    """
    start = time.perf_counter()
    generator = None
    if sampling.temperature > 0:
        generator = torch.Generator().manual_seed(sampling.seed)
    emitted = ""
    pending_ids: list[int] = []
    result.finish_reason = "length"
    while len(result.token_ids) < stop.max_new_tokens:
        if is_cancelled():
            result.finish_reason = "cancelled"
            break
        logits = runner.forward(next_input, cache)
        token = choose_token(logits, sampling, generator)
        if not result.time_to_first_token_ms:
            result.time_to_first_token_ms = (time.perf_counter() - start) * 1e3
        if token in stop.eos_token_ids:
            result.finish_reason = "stop"
            break
        result.token_ids.append(token)
        pending_ids.append(token)
        full = tokenizer.decode(result.token_ids, skip_special_tokens=True)
        cut = min((full.find(s) for s in stop.stop_strings if s in full), default=-1)
        if cut >= 0:
            result.text = full[:cut]
            result.finish_reason = "stop"
            break
        result.text = full
        safe = full[: len(full) - _held_back(full, stop.stop_strings)]
        if safe.startswith(emitted) and len(safe) > len(emitted):
            yield TextDelta(text=safe[len(emitted) :], token_ids=tuple(pending_ids))
            emitted, pending_ids = safe, []
        next_input = torch.tensor([[token]])
    if result.text.startswith(emitted) and (len(result.text) > len(emitted) or pending_ids):
        yield TextDelta(text=result.text[len(emitted) :], token_ids=tuple(pending_ids))
    result.decode_ms = (time.perf_counter() - start) * 1e3
