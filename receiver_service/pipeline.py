"""The receiver's work for one request, in the three modes, with the fallback rules.

``c2c``: tokenize; start the sharer's Prefill stream and, at the same time, prefill positions
0..N-2 on the receiver; fuse each sharer layer into the receiver's cache as it arrives; run the
last prompt token on the fused cache; decode. ``receiver_only``: the same without the sharer (so a
fuser whose gates are all off gives exactly the receiver_only tokens). ``text``: the sharer's
GenerateText answer is prepended to the prompt with ``TEXT_HINT_TEMPLATE``, then receiver_only.

Fallback: when the sharer is unreachable (UNAVAILABLE), too slow (DEADLINE_EXCEEDED), sends a bad
stream (DATA_LOSS) or is not the sharer the fuser was trained for (FAILED_PRECONDITION), a request
with ``allow_fallback`` is answered receiver_only, with ``mode_used`` and ``fallback_reason`` set
and a ``fallback`` event on the span; without it the request fails with that status. Layers fused
before a stream broke are put back to the receiver's own cache first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
from opentelemetry import trace
from transformers import DynamicCache

from c2c.active_requests import ActiveRequests
from c2c.deferred_spans import AfterRpc, leaf_span
from c2c.errors import (
    BadRequest,
    BadStream,
    C2CError,
    PeerDeadlineExceeded,
    PeerUnavailable,
    WrongModel,
)
from c2c.generation import (
    GenerationResult,
    ModelRunner,
    RequestCancelled,
    StopRule,
    TextDelta,
    eos_token_ids,
)
from c2c.generation import generate as decode_loop
from c2c.kv_codec import ExpectedShape, codec_name
from c2c.model_loading import LoadedModel, card_from_proto
from c2c.telemetry import current_trace_id, record_fallback, record_request, rpc_server_span
from fuser.alignment import tokenize_with_spans
from fuser.checkpoint import check_pair
from fuser.fuser import C2CFuser
from fuser.graph_runner import DEFAULT_BUCKETS, FusionGraphRunner
from protos import c2c_pb2
from receiver_service.request_validation import GenerationRequest, RequestLimits
from receiver_service.sharer_client import SharerClient

TEXT_HINT_TEMPLATE = "Notes from another model about this request:\n{hint}\n\n"
"""How the text mode hands the sharer's answer to the receiver: prepended to a raw prompt, or to
the first system message (a new one at the front when there is none) of a chat request. The
sharer is asked the raw prompt, or the last user message of a chat request."""

# A sharer failure that a request may fall back from, and its short metric label.
_FALLBACK_LABELS = {
    PeerUnavailable: "unavailable",
    PeerDeadlineExceeded: "deadline",
    BadStream: "bad_stream",
    WrongModel: "wrong_model",
}
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class ReceiverSettings:
    """Request limits and how long the receiver waits for its sharer."""

    limits: RequestLimits = field(default_factory=RequestLimits)
    sharer_timeout_s: float = 30.0
    describe_timeout_s: float = 5.0
    text_hint_tokens: int = 64
    max_message_bytes: int = 1 << 20
    graph_buckets: tuple[int, ...] = DEFAULT_BUCKETS


@dataclass
class Timings:
    """Milliseconds, measured on the receiver (sharer_prefill is the sharer's own report)."""

    receiver_prefill: float = 0.0
    sharer_prefill: float = 0.0
    transfer: float = 0.0
    fusion: float = 0.0
    decode: float = 0.0
    total: float = 0.0
    transfer_blocked: float = 0.0
    time_to_first_token: float = 0.0


@dataclass
class Outcome:
    """Everything a reply reports; filled while the request runs."""

    mode_used: str = ""
    fallback_reason: str = ""
    trace_id: str = ""
    prompt_tokens: int = 0
    bytes_on_wire: int = 0
    codec_used: int = 0
    fused_layers: list[int] = field(default_factory=list)
    sharer_layers: list[int] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    generation: GenerationResult = field(default_factory=GenerationResult)


@dataclass
class C2CReadiness:
    """Whether c2c requests can be served; if not, the error they get and the sharer card."""

    ready: bool
    reason: str = ""
    sharer_card: c2c_pb2.ModelCard | None = None
    error: C2CError | None = None


def _fallback_label(error: C2CError) -> str:
    """The short metric label of a fallback's cause."""
    for kind, label in _FALLBACK_LABELS.items():
        if isinstance(error, kind):
            return label
    return "one_token_prompt"


class _Fallback(Exception):
    """Internal: the sharer failed and the request allows answering receiver_only."""

    def __init__(self, error: C2CError) -> None:
        super().__init__(str(error))
        self.error = error


class ReceiverPipeline:
    """The receiver model, its fuser and its sharer, serving requests concurrently."""

    def __init__(
        self,
        receiver: LoadedModel,
        fuser: C2CFuser | None,
        fuser_fingerprint: str,
        sharer: SharerClient | None,
        settings: ReceiverSettings,
    ) -> None:
        self.receiver = receiver
        self.fuser = fuser
        # CUDA graphs are captured here, once, for every bucket; CPU fuses eagerly.
        self.fusion = FusionGraphRunner(fuser, settings.graph_buckets) if fuser else None
        self.fuser_fingerprint = fuser_fingerprint
        self.sharer = sharer
        self.settings = settings
        self.runner = ModelRunner(receiver.model)
        self._eos = eos_token_ids(receiver.model, receiver.tokenizer)
        self._requests = ActiveRequests()
        self.readiness = C2CReadiness(False, "not checked yet")

    # -- state -------------------------------------------------------------------------------

    @property
    def active_requests(self) -> int:
        """Requests still holding model work or tensors (0 once every request is released)."""
        return self._requests.count

    def check_sharer(self) -> C2CReadiness:
        """Describe the sharer and check it is the model the fuser was trained for.

        Unreachable: not ready, asked again on the next c2c request (UNAVAILABLE meanwhile).
        Mismatched: not ready, naming the field that differs (FAILED_PRECONDITION). Either way
        receiver_only and text requests keep working.
        """
        if self.fuser is None or self.sharer is None:
            missing = "fuser checkpoint" if self.fuser is None else "sharer address"
            error = WrongModel(f"c2c is not available: no {missing} configured")
            self.readiness = C2CReadiness(False, str(error), error=error)
            return self.readiness
        try:
            card = self.sharer.describe(self.settings.describe_timeout_s)
        except C2CError as error:
            self.readiness = C2CReadiness(False, str(error), error=error)
            return self.readiness
        try:
            check_pair(self.fuser.config, None, card_from_proto(card))
        except WrongModel as error:
            self.readiness = C2CReadiness(False, str(error), card, error)
            return self.readiness
        self.readiness = C2CReadiness(True, "", card)
        return self.readiness

    # -- one request ---------------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        outcome: Outcome,
        is_cancelled: Callable[[], bool] = lambda: False,
        time_remaining: Callable[[], float | None] = lambda: None,
        after_rpc: AfterRpc | None = None,
    ) -> Iterator[TextDelta]:
        """Answer ``request``, yielding text deltas as they decode; ``outcome`` holds the rest.

        ``after_rpc`` (the RPC's ``add_callback``) builds the request's leaf spans once the
        reply has gone; without it they are built as the request ends.
        """
        start = time.perf_counter()
        self._requests.add(+1)
        status = "ok"
        with rpc_server_span("receiver.generate", after_rpc) as span:
            outcome.trace_id = current_trace_id()
            span.set_attributes({"c2c.mode": request.mode, "c2c.codec": codec_name(request.codec)})
            try:
                yield from self._generate(
                    request, outcome, is_cancelled, time_remaining, span, start
                )
            except RequestCancelled:
                status = "cancelled"
                span.add_event("cancelled")
            except GeneratorExit:  # the caller stopped reading: the client is gone
                status = "cancelled"
                raise
            except C2CError as error:
                status = error.status.name
                raise
            except Exception:
                status = "INTERNAL"
                raise
            finally:
                timings = outcome.timings
                timings.total = (time.perf_counter() - start) * 1e3
                span.set_attributes(
                    {
                        "c2c.mode_used": outcome.mode_used,
                        "c2c.prompt_tokens": outcome.prompt_tokens,
                        "c2c.new_tokens": len(outcome.generation.token_ids),
                    }
                )
                uses_sharer = outcome.mode_used in ("c2c", "text")
                record_request(
                    request.mode,
                    status,
                    timings.total,
                    transfer_ms=timings.transfer if uses_sharer else None,
                    fusion_ms=timings.fusion if outcome.mode_used == "c2c" else None,
                    bytes_on_wire=outcome.bytes_on_wire if uses_sharer else None,
                )
                self._requests.add(-1)

    def _generate(
        self,
        request: GenerationRequest,
        outcome: Outcome,
        is_cancelled: Callable[[], bool],
        time_remaining: Callable[[], float | None],
        span: trace.Span,
        start: float,
    ) -> Iterator[TextDelta]:
        mode = request.mode
        outcome.mode_used = mode
        ids = None
        try:
            asked = request
            if mode == "text":
                self._tokenize(request)  # refuse a bad prompt before the sharer writes notes
                asked = self._with_sharer_hint(request, outcome, time_remaining)
            ids, spans, text = self._tokenize(asked, with_notes=mode == "text")
            outcome.prompt_tokens = len(ids)
            if mode == "c2c" and len(ids) < 2:
                raise _Fallback(BadRequest("the prompt has one token: nothing to fuse"))
            if mode == "c2c":
                cache = self._c2c_cache(
                    request, ids, spans, text, outcome, is_cancelled, time_remaining
                )
            else:
                cache = self._own_prefill(ids, outcome)
        except _Fallback as fallback:
            reason = str(fallback.error)
            outcome.mode_used = "receiver_only"
            outcome.fallback_reason = reason
            outcome.fused_layers, outcome.sharer_layers = [], []
            outcome.codec_used = 0
            span.add_event("fallback", {"c2c.fallback_reason": reason})
            record_fallback(_fallback_label(fallback.error))
            if ids is None:
                ids, spans, text = self._tokenize(request)
                outcome.prompt_tokens = len(ids)
            cache = self._own_prefill(ids, outcome)
        if is_cancelled():
            raise RequestCancelled
        yield from self._decode(request, cache, ids, outcome, is_cancelled, start)

    def _tokenize(
        self, request: GenerationRequest, with_notes: bool = False
    ) -> tuple[list[int], list, str]:
        with leaf_span("receiver.tokenize") as span:
            tokenizer = self.receiver.tokenizer
            if request.prompt is not None:
                text = request.prompt
            else:
                messages = [
                    {"role": role, "content": content} for role, content in request.messages
                ]
                try:
                    text = tokenizer.apply_chat_template(
                        messages, tokenize=False, add_generation_prompt=True
                    )
                except (ValueError, TypeError) as error:
                    raise BadRequest(f"messages: cannot apply the chat template: {error}") from None
            ids, spans = tokenize_with_spans(tokenizer, text)
            span.set_attribute("c2c.prompt_tokens", len(ids))
        field_name = "prompt" if request.prompt is not None else "messages"
        if not ids:
            raise BadRequest(f"{field_name}: tokenizes to no tokens")
        limit = self.settings.limits.max_prompt_tokens
        if len(ids) > limit:
            notes = " with the sharer's notes" if with_notes else ""
            raise BadRequest(
                f"{field_name}: {len(ids)} tokens{notes} exceeds the server limit {limit}"
            )
        return ids, spans, text

    def _own_prefill(self, ids: list[int], outcome: Outcome) -> DynamicCache:
        """The receiver's cache of positions 0..N-2 (the last token starts decoding)."""
        start = time.perf_counter()
        cache = self.runner.new_cache()
        with leaf_span("receiver.prefill") as span:
            span.set_attribute("c2c.positions", len(ids) - 1)
            if len(ids) > 1:
                self.runner.fill_cache(torch.tensor([ids[:-1]]), cache)
        outcome.timings.receiver_prefill = (time.perf_counter() - start) * 1e3
        return cache

    def _sharer_timeout(self, time_remaining: Callable[[], float | None]) -> float:
        remaining = time_remaining()
        timeout = self.settings.sharer_timeout_s
        return timeout if remaining is None else max(0.001, min(timeout, remaining))

    def _sharer_failed(self, error: C2CError, request: GenerationRequest) -> None:
        """Fallback if the request allows it and the failure is the sharer's; else fail."""
        if request.allow_fallback and isinstance(error, tuple(_FALLBACK_LABELS)):
            raise _Fallback(error) from error
        raise error

    def _ready_for_c2c(self, request: GenerationRequest) -> C2CFuser:
        readiness = self.readiness
        if not readiness.ready and readiness.sharer_card is None:
            readiness = self.check_sharer()  # unreachable before: it may be up now
        if not readiness.ready:
            assert readiness.error is not None
            self._sharer_failed(readiness.error, request)
        assert self.fuser is not None
        return self.fuser

    def _c2c_cache(
        self,
        request: GenerationRequest,
        ids: list[int],
        spans: list,
        text: str,
        outcome: Outcome,
        is_cancelled: Callable[[], bool],
        time_remaining: Callable[[], float | None],
    ) -> DynamicCache:
        fuser = self._ready_for_c2c(request)
        sharer_layers = fuser.required_sharer_layers()
        if not sharer_layers:
            return self._own_prefill(ids, outcome)  # every gate off: nothing to ask for
        layer_map = fuser.layer_map()
        targets: dict[int, list[int]] = {}
        for receiver_layer in fuser.fused_receiver_layers():
            targets.setdefault(layer_map[receiver_layer], []).append(receiver_layer)
        alignment = request.alignment or fuser.config.alignment
        pair = fuser.config
        if alignment == "identity" and (
            pair.receiver.tokenizer_fingerprint != pair.sharer.tokenizer_fingerprint
        ):
            raise BadRequest(
                "alignment: identity needs one tokenizer on both sides; this pair has two"
            )
        fused_spans = spans[:-1]
        prefill_request = c2c_pb2.PrefillRequest(
            text=text,
            receiver_spans=[c2c_pb2.TokenSpan(start=s, end=e) for s, e in fused_spans],
            token_ids=ids[:-1] if alignment == "identity" else [],
            alignment=c2c_pb2.Alignment.Value(f"ALIGNMENT_{alignment.upper()}"),
            layers=sharer_layers,
            codec=request.codec,
            max_message_bytes=self.settings.max_message_bytes,
        )
        sharer_dims = fuser.config.sharer
        expected = ExpectedShape(
            model_fingerprint=sharer_dims.model_fingerprint,
            num_kv_heads=sharer_dims.num_kv_heads,
            head_dim=sharer_dims.head_dim,
            num_positions=len(ids) - 1,
        )
        assert self.sharer is not None
        transfer = self.sharer.open_prefill(
            prefill_request, self._sharer_timeout(time_remaining), expected
        )
        originals: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        cache = None
        try:
            cache = self._own_prefill(ids, outcome)  # meanwhile the stream arrives
            with leaf_span("fusion") as span:
                while (layer := self._next_layer(transfer, is_cancelled)) is not None:
                    for receiver_layer in targets[layer.layer]:
                        cached = cache.layers[receiver_layer]
                        originals[receiver_layer] = (cached.keys, cached.values)
                        start = time.perf_counter()
                        cached.keys, cached.values = self.fusion.fuse_layer(
                            receiver_layer,
                            cached.keys,
                            cached.values,
                            layer.key.to(cached.keys.device),
                            layer.value.to(cached.keys.device),
                        )
                        elapsed = (time.perf_counter() - start) * 1e3
                        outcome.timings.fusion += elapsed
                        if span.is_recording():  # reading the gates costs a tensor op
                            key_gate, value_gate = fuser.hard_gates(receiver_layer)
                            span.add_event(
                                "layer",
                                {
                                    "c2c.layer": receiver_layer,
                                    "c2c.sharer_layer": layer.layer,
                                    "c2c.gate": f"k={int(key_gate)},v={int(value_gate)}",
                                    "c2c.duration_ms": elapsed,
                                },
                            )
                span.set_attribute("c2c.fused_layers", sorted(originals))
        except C2CError as error:
            for receiver_layer, (keys, values) in originals.items():
                cache.layers[receiver_layer].keys = keys
                cache.layers[receiver_layer].values = values
            transfer.cancel()  # waits for the reader, so the stats below are final
            self._record_transfer(transfer, outcome)
            self._sharer_failed(error, request)
        finally:
            transfer.cancel()  # after the trailer: waits for the reader's last stats
        self._record_transfer(transfer, outcome)
        outcome.codec_used = request.codec
        outcome.fused_layers = sorted(originals)
        outcome.sharer_layers = list(sharer_layers)
        return cache

    def _next_layer(self, transfer, is_cancelled: Callable[[], bool]):
        while True:
            layer = transfer.next_layer(timeout_s=_POLL_SECONDS)
            if layer is not transfer.PENDING:
                return layer
            if is_cancelled():
                raise RequestCancelled

    @staticmethod
    def _record_transfer(transfer, outcome: Outcome) -> None:
        stats = transfer.stats
        outcome.bytes_on_wire = stats.bytes_on_wire
        outcome.timings.transfer = stats.transfer_ms
        outcome.timings.transfer_blocked = stats.blocked_ms
        outcome.timings.sharer_prefill = stats.sharer_prefill_ms

    def _with_sharer_hint(
        self,
        request: GenerationRequest,
        outcome: Outcome,
        time_remaining: Callable[[], float | None],
    ) -> GenerationRequest:
        """The request with the sharer's answer prepended (``TEXT_HINT_TEMPLATE``)."""
        if self.sharer is None:
            self._sharer_failed(PeerUnavailable("no sharer address configured"), request)
        if request.prompt is not None:
            question = request.prompt
        else:
            question = next(
                (c for role, c in reversed(request.messages) if role == "user"),
                request.messages[-1][1],
            )
        start = time.perf_counter()
        try:
            hint, received = self.sharer.generate_text(
                question, self.settings.text_hint_tokens, self._sharer_timeout(time_remaining)
            )
        except C2CError as error:
            self._sharer_failed(error, request)
        outcome.timings.transfer = (time.perf_counter() - start) * 1e3
        outcome.bytes_on_wire = received
        notes = TEXT_HINT_TEMPLATE.format(hint=hint.strip())
        if request.prompt is not None:
            return replace(request, prompt=notes + request.prompt)
        messages = list(request.messages)
        system = next((i for i, (role, _) in enumerate(messages) if role == "system"), None)
        if system is None:
            messages.insert(0, ("system", notes.rstrip()))
        else:
            messages[system] = ("system", notes + messages[system][1])
        return replace(request, messages=tuple(messages))

    def _decode(
        self,
        request: GenerationRequest,
        cache: DynamicCache,
        ids: list[int],
        outcome: Outcome,
        is_cancelled: Callable[[], bool],
        request_start: float,
    ) -> Iterator[TextDelta]:
        decode_start = time.perf_counter()
        with leaf_span("decoding") as span:
            stop = StopRule(request.max_new_tokens, self._eos, request.stop_strings)
            result = outcome.generation
            yield from decode_loop(
                self.runner,
                self.receiver.tokenizer,
                cache,
                torch.tensor([ids[-1:]]),
                request.sampling,
                stop,
                result,
                is_cancelled,
            )
            if result.finish_reason == "cancelled":
                raise RequestCancelled
            tokens = len(result.token_ids)
            seconds = result.decode_ms / 1e3
            ttft = (decode_start - request_start) * 1e3 + result.time_to_first_token_ms
            span.set_attributes(
                {
                    "c2c.new_tokens": tokens,
                    "c2c.tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
                    "c2c.time_to_first_token_ms": ttft,
                }
            )
        outcome.timings.decode = result.decode_ms
        outcome.timings.time_to_first_token = ttft
