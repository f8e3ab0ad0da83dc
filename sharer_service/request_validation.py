"""Prefill / GenerateText requests (protobuf) to validated plans, or BadRequest naming the field."""

from __future__ import annotations

from c2c.errors import BadRequest
from c2c.generation import SamplingConfig, checked_stop_strings
from c2c.kv_codec import CodecSpec
from protos import c2c_pb2
from sharer_service.prefill import PrefillPlan, SharerLimits, TextPlan

_ALIGNMENTS = {
    c2c_pb2.ALIGNMENT_IDENTITY: "identity",
    c2c_pb2.ALIGNMENT_OFFSETS: "offsets",
    c2c_pb2.ALIGNMENT_FIRST: "first",
}


def prefill_plan(
    request: c2c_pb2.PrefillRequest, limits: SharerLimits, num_layers: int
) -> PrefillPlan:
    """Check a PrefillRequest against the model and the server limits."""
    alignment_value = request.alignment
    if alignment_value == c2c_pb2.ALIGNMENT_UNSPECIFIED:
        has_ids = len(request.token_ids) > 0
        alignment_value = c2c_pb2.ALIGNMENT_IDENTITY if has_ids else c2c_pb2.ALIGNMENT_OFFSETS
    if alignment_value not in _ALIGNMENTS:
        raise BadRequest(f"alignment: unknown value {request.alignment}")
    alignment = _ALIGNMENTS[alignment_value]
    spans = tuple((span.start, span.end) for span in request.receiver_spans)
    if alignment == "identity":
        if not request.token_ids:
            raise BadRequest("token_ids: required for identity alignment")
    else:
        if not request.text:
            raise BadRequest(f"text: required for {alignment} alignment")
        if not spans:
            raise BadRequest(f"receiver_spans: required for {alignment} alignment")
        for index, (start, end) in enumerate(spans):
            if not start <= end <= len(request.text):
                raise BadRequest(
                    f"receiver_spans[{index}]: [{start}, {end}) is not inside the text of "
                    f"{len(request.text)} characters"
                )
        positions = len(spans)
        if positions > limits.max_prompt_tokens:
            raise BadRequest(
                f"receiver_spans: {positions} positions exceeds the sharer limit "
                f"{limits.max_prompt_tokens}"
            )
    if not request.layers:
        raise BadRequest("layers: at least one layer is required")
    for index, layer in enumerate(request.layers):
        if layer >= num_layers:
            raise BadRequest(
                f"layers[{index}]: layer {layer} does not exist (the sharer has {num_layers})"
            )
    if len(set(request.layers)) != len(request.layers):
        raise BadRequest("layers: a layer is requested twice")
    spec = CodecSpec.from_request(
        request.codec,
        request.int4_group_size,
        request.max_message_bytes or limits.max_message_bytes,
        default_codec=limits.default_codec,
    )
    return PrefillPlan(
        text=request.text,
        receiver_spans=spans,
        token_ids=tuple(request.token_ids),
        alignment=alignment,
        layers=tuple(request.layers),
        spec=spec,
    )


def text_plan(request: c2c_pb2.GenerateTextRequest, limits: SharerLimits) -> TextPlan:
    """Check a GenerateTextRequest against the server limits."""
    if not request.prompt.strip():
        raise BadRequest("prompt: must not be empty")
    if request.max_new_tokens > limits.max_new_tokens:
        raise BadRequest(
            f"max_new_tokens: {request.max_new_tokens} exceeds the server limit "
            f"{limits.max_new_tokens}"
        )
    sampling = SamplingConfig.from_request(request.temperature, request.top_p, request.seed)
    stop_strings = checked_stop_strings(list(request.stop))
    return TextPlan(
        prompt=request.prompt,
        sampling=sampling,
        max_new_tokens=request.max_new_tokens or min(64, limits.max_new_tokens),
        stop_strings=stop_strings,
    )
