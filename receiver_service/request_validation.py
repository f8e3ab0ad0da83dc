"""GenerateRequest (protobuf) to a validated GenerationRequest, or BadRequest naming the field.

This is the receiver's boundary: past it nothing sees protobuf types, and every value is in range.
"""

from __future__ import annotations

from dataclasses import dataclass

from c2c.errors import BadRequest
from c2c.generation import SamplingConfig, checked_stop_strings
from protos import c2c_pb2

CHAT_ROLES = ("system", "user", "assistant")

MODE_NAMES = {
    c2c_pb2.MODE_UNSPECIFIED: "c2c",
    c2c_pb2.MODE_C2C: "c2c",
    c2c_pb2.MODE_RECEIVER_ONLY: "receiver_only",
    c2c_pb2.MODE_TEXT: "text",
}
MODE_VALUES = {
    "c2c": c2c_pb2.MODE_C2C,
    "receiver_only": c2c_pb2.MODE_RECEIVER_ONLY,
    "text": c2c_pb2.MODE_TEXT,
}

ALIGNMENT_NAMES = {
    c2c_pb2.ALIGNMENT_UNSPECIFIED: None,
    c2c_pb2.ALIGNMENT_IDENTITY: "identity",
    c2c_pb2.ALIGNMENT_OFFSETS: "offsets",
    c2c_pb2.ALIGNMENT_FIRST: "first",
}

# Field numbers of GenerateRequest's `input` oneof, as they appear on the wire.
_PROMPT_FIELD = 1
_MESSAGES_FIELD = 2


@dataclass(frozen=True)
class RequestLimits:
    """What the server accepts; values come from the receiver's command line."""

    max_new_tokens: int = 512
    default_new_tokens: int = 128
    max_prompt_tokens: int = 2048
    default_codec: int = c2c_pb2.CODEC_FP16


@dataclass(frozen=True)
class GenerationRequest:
    """One validated request: exactly one of ``prompt`` / ``messages`` is set."""

    prompt: str | None
    messages: tuple[tuple[str, str], ...] | None
    mode: str
    allow_fallback: bool
    max_new_tokens: int
    sampling: SamplingConfig
    codec: int
    stop_strings: tuple[str, ...]
    alignment: str | None


def input_fields_on_wire(serialized: bytes) -> set[int]:
    """Which of GenerateRequest's `input` fields the serialized bytes carry.

    Protobuf keeps only the last member of a oneof when parsing, so a request that sets both
    ``prompt`` and ``messages`` can only be told apart from the raw bytes.
    """
    seen: set[int] = set()
    position = 0
    while position < len(serialized):
        key, position = _varint(serialized, position)
        number, wire_type = key >> 3, key & 7
        if number in (_PROMPT_FIELD, _MESSAGES_FIELD):
            seen.add(number)
        if wire_type == 0:
            _, position = _varint(serialized, position)
        elif wire_type == 1:
            position += 8
        elif wire_type == 2:
            length, position = _varint(serialized, position)
            position += length
        elif wire_type == 5:
            position += 4
        else:
            break  # groups are not used by this message; the parser has already accepted it
    return seen


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while position < len(data):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return value, position


def validate_generate_request(
    request: c2c_pb2.GenerateRequest, limits: RequestLimits, *, both_inputs: bool = False
) -> GenerationRequest:
    """Check every field of ``request``; ``both_inputs`` is what the raw bytes said."""
    if both_inputs:
        raise BadRequest("prompt, messages: set exactly one of them, not both")
    which = request.WhichOneof("input")
    if which is None:
        raise BadRequest("prompt, messages: one of them is required")
    prompt, messages = None, None
    if which == "prompt":
        if not request.prompt.strip():
            raise BadRequest("prompt: must not be empty")
        prompt = request.prompt
    else:
        messages = _validated_messages(request.messages.messages)
    if request.mode not in MODE_NAMES:
        raise BadRequest(f"mode: unknown value {request.mode}")
    if request.codec != c2c_pb2.CODEC_UNSPECIFIED and request.codec not in c2c_pb2.Codec.values():
        raise BadRequest(f"codec: unknown value {request.codec}")
    if request.alignment not in ALIGNMENT_NAMES:
        raise BadRequest(f"alignment: unknown value {request.alignment}")
    if request.max_new_tokens > limits.max_new_tokens:
        raise BadRequest(
            f"max_new_tokens: {request.max_new_tokens} exceeds the server limit "
            f"{limits.max_new_tokens}"
        )
    sampling = SamplingConfig.from_request(request.temperature, request.top_p, request.seed)
    stop_strings = checked_stop_strings(list(request.stop))
    return GenerationRequest(
        prompt=prompt,
        messages=messages,
        mode=MODE_NAMES[request.mode],
        allow_fallback=request.allow_fallback,
        max_new_tokens=request.max_new_tokens or limits.default_new_tokens,
        sampling=sampling,
        codec=request.codec or limits.default_codec,
        stop_strings=stop_strings,
        alignment=ALIGNMENT_NAMES[request.alignment],
    )


def _validated_messages(turns) -> tuple[tuple[str, str], ...]:
    if not turns:
        raise BadRequest("messages: must hold at least one message")
    checked = []
    for index, turn in enumerate(turns):
        if turn.role not in CHAT_ROLES:
            raise BadRequest(
                f"messages[{index}].role: unknown role {turn.role!r}, expected one of "
                f"{', '.join(CHAT_ROLES)}"
            )
        checked.append((turn.role, turn.content))
    if not any(content.strip() for _, content in checked):
        raise BadRequest("messages: every message content is empty")
    return tuple(checked)
