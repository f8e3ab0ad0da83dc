from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_C2C: _ClassVar[Mode]
    MODE_RECEIVER_ONLY: _ClassVar[Mode]
    MODE_TEXT: _ClassVar[Mode]

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_UNSPECIFIED: _ClassVar[Codec]
    CODEC_FP16: _ClassVar[Codec]
    CODEC_BF16: _ClassVar[Codec]
    CODEC_INT8: _ClassVar[Codec]
    CODEC_INT4: _ClassVar[Codec]

class Alignment(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALIGNMENT_UNSPECIFIED: _ClassVar[Alignment]
    ALIGNMENT_IDENTITY: _ClassVar[Alignment]
    ALIGNMENT_OFFSETS: _ClassVar[Alignment]
    ALIGNMENT_FIRST: _ClassVar[Alignment]

class TensorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENSOR_KIND_UNSPECIFIED: _ClassVar[TensorKind]
    TENSOR_KIND_KEY: _ClassVar[TensorKind]
    TENSOR_KIND_VALUE: _ClassVar[TensorKind]
MODE_UNSPECIFIED: Mode
MODE_C2C: Mode
MODE_RECEIVER_ONLY: Mode
MODE_TEXT: Mode
CODEC_UNSPECIFIED: Codec
CODEC_FP16: Codec
CODEC_BF16: Codec
CODEC_INT8: Codec
CODEC_INT4: Codec
ALIGNMENT_UNSPECIFIED: Alignment
ALIGNMENT_IDENTITY: Alignment
ALIGNMENT_OFFSETS: Alignment
ALIGNMENT_FIRST: Alignment
TENSOR_KIND_UNSPECIFIED: TensorKind
TENSOR_KIND_KEY: TensorKind
TENSOR_KIND_VALUE: TensorKind

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelCard(_message.Message):
    __slots__ = ("model_name", "model_fingerprint", "architecture", "num_layers", "num_kv_heads", "head_dim", "dtype", "tokenizer_fingerprint", "max_prompt_tokens", "version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_fingerprint: str
    architecture: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    tokenizer_fingerprint: str
    max_prompt_tokens: int
    version: str
    def __init__(self, model_name: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., architecture: _Optional[str] = ..., num_layers: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., dtype: _Optional[str] = ..., tokenizer_fingerprint: _Optional[str] = ..., max_prompt_tokens: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class TokenSpan(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class PrefillRequest(_message.Message):
    __slots__ = ("text", "receiver_spans", "token_ids", "alignment", "layers", "codec", "int4_group_size", "max_message_bytes")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_SPANS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    INT4_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    text: str
    receiver_spans: _containers.RepeatedCompositeFieldContainer[TokenSpan]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    alignment: Alignment
    layers: _containers.RepeatedScalarFieldContainer[int]
    codec: Codec
    int4_group_size: int
    max_message_bytes: int
    def __init__(self, text: _Optional[str] = ..., receiver_spans: _Optional[_Iterable[_Union[TokenSpan, _Mapping]]] = ..., token_ids: _Optional[_Iterable[int]] = ..., alignment: _Optional[_Union[Alignment, str]] = ..., layers: _Optional[_Iterable[int]] = ..., codec: _Optional[_Union[Codec, str]] = ..., int4_group_size: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class KVMessage(_message.Message):
    __slots__ = ("header", "tensor", "piece", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: KVHeader
    tensor: KVTensorHeader
    piece: KVPiece
    trailer: KVTrailer
    def __init__(self, header: _Optional[_Union[KVHeader, _Mapping]] = ..., tensor: _Optional[_Union[KVTensorHeader, _Mapping]] = ..., piece: _Optional[_Union[KVPiece, _Mapping]] = ..., trailer: _Optional[_Union[KVTrailer, _Mapping]] = ...) -> None: ...

class KVHeader(_message.Message):
    __slots__ = ("model_fingerprint", "num_layers", "num_kv_heads", "head_dim", "num_positions", "batch", "codec", "int4_group_size", "layers", "source_dtype")
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    INT4_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    model_fingerprint: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_positions: int
    batch: int
    codec: Codec
    int4_group_size: int
    layers: _containers.RepeatedScalarFieldContainer[int]
    source_dtype: str
    def __init__(self, model_fingerprint: _Optional[str] = ..., num_layers: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., num_positions: _Optional[int] = ..., batch: _Optional[int] = ..., codec: _Optional[_Union[Codec, str]] = ..., int4_group_size: _Optional[int] = ..., layers: _Optional[_Iterable[int]] = ..., source_dtype: _Optional[str] = ...) -> None: ...

class PayloadInfo(_message.Message):
    __slots__ = ("encoded_bytes", "raw_bytes", "lz4", "crc32")
    ENCODED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RAW_BYTES_FIELD_NUMBER: _ClassVar[int]
    LZ4_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    encoded_bytes: int
    raw_bytes: int
    lz4: bool
    crc32: int
    def __init__(self, encoded_bytes: _Optional[int] = ..., raw_bytes: _Optional[int] = ..., lz4: _Optional[bool] = ..., crc32: _Optional[int] = ...) -> None: ...

class KVTensorHeader(_message.Message):
    __slots__ = ("layer", "kind", "shape", "codec", "group_size", "data", "scales")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    layer: int
    kind: TensorKind
    shape: _containers.RepeatedScalarFieldContainer[int]
    codec: Codec
    group_size: int
    data: PayloadInfo
    scales: PayloadInfo
    def __init__(self, layer: _Optional[int] = ..., kind: _Optional[_Union[TensorKind, str]] = ..., shape: _Optional[_Iterable[int]] = ..., codec: _Optional[_Union[Codec, str]] = ..., group_size: _Optional[int] = ..., data: _Optional[_Union[PayloadInfo, _Mapping]] = ..., scales: _Optional[_Union[PayloadInfo, _Mapping]] = ...) -> None: ...

class KVPiece(_message.Message):
    __slots__ = ("layer", "kind", "scales", "offset", "data")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    layer: int
    kind: TensorKind
    scales: bool
    offset: int
    data: bytes
    def __init__(self, layer: _Optional[int] = ..., kind: _Optional[_Union[TensorKind, str]] = ..., scales: _Optional[bool] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class KVTrailer(_message.Message):
    __slots__ = ("tokenize_ms", "prefill_ms", "encode_ms", "total_ms", "raw_bytes", "encoded_bytes", "messages", "sharer_tokens")
    TOKENIZE_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    RAW_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENCODED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SHARER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokenize_ms: float
    prefill_ms: float
    encode_ms: float
    total_ms: float
    raw_bytes: int
    encoded_bytes: int
    messages: int
    sharer_tokens: int
    def __init__(self, tokenize_ms: _Optional[float] = ..., prefill_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., raw_bytes: _Optional[int] = ..., encoded_bytes: _Optional[int] = ..., messages: _Optional[int] = ..., sharer_tokens: _Optional[int] = ...) -> None: ...

class GenerateTextRequest(_message.Message):
    __slots__ = ("prompt", "max_new_tokens", "temperature", "top_p", "seed", "stop")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prompt: _Optional[str] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateTextReply(_message.Message):
    __slots__ = ("text", "token_ids", "prompt_tokens", "total_ms")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt_tokens: int
    total_ms: float
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., prompt_tokens: _Optional[int] = ..., total_ms: _Optional[float] = ...) -> None: ...

class ReceiverCard(_message.Message):
    __slots__ = ("receiver", "sharer", "fuser_fingerprint", "c2c_ready", "c2c_unready_reason", "default_codec", "max_new_tokens_limit")
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    SHARER_FIELD_NUMBER: _ClassVar[int]
    FUSER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    C2C_READY_FIELD_NUMBER: _ClassVar[int]
    C2C_UNREADY_REASON_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CODEC_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    receiver: ModelCard
    sharer: ModelCard
    fuser_fingerprint: str
    c2c_ready: bool
    c2c_unready_reason: str
    default_codec: Codec
    max_new_tokens_limit: int
    def __init__(self, receiver: _Optional[_Union[ModelCard, _Mapping]] = ..., sharer: _Optional[_Union[ModelCard, _Mapping]] = ..., fuser_fingerprint: _Optional[str] = ..., c2c_ready: _Optional[bool] = ..., c2c_unready_reason: _Optional[str] = ..., default_codec: _Optional[_Union[Codec, str]] = ..., max_new_tokens_limit: _Optional[int] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ChatMessages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "messages", "max_new_tokens", "mode", "allow_fallback", "temperature", "top_p", "seed", "codec", "stop", "alignment")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: ChatMessages
    max_new_tokens: int
    mode: Mode
    allow_fallback: bool
    temperature: float
    top_p: float
    seed: int
    codec: Codec
    stop: _containers.RepeatedScalarFieldContainer[str]
    alignment: Alignment
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Union[ChatMessages, _Mapping]] = ..., max_new_tokens: _Optional[int] = ..., mode: _Optional[_Union[Mode, str]] = ..., allow_fallback: _Optional[bool] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., codec: _Optional[_Union[Codec, str]] = ..., stop: _Optional[_Iterable[str]] = ..., alignment: _Optional[_Union[Alignment, str]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("receiver_prefill", "sharer_prefill", "transfer", "fusion", "decode", "total", "transfer_blocked", "time_to_first_token")
    RECEIVER_PREFILL_FIELD_NUMBER: _ClassVar[int]
    SHARER_PREFILL_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_BLOCKED_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    receiver_prefill: float
    sharer_prefill: float
    transfer: float
    fusion: float
    decode: float
    total: float
    transfer_blocked: float
    time_to_first_token: float
    def __init__(self, receiver_prefill: _Optional[float] = ..., sharer_prefill: _Optional[float] = ..., transfer: _Optional[float] = ..., fusion: _Optional[float] = ..., decode: _Optional[float] = ..., total: _Optional[float] = ..., transfer_blocked: _Optional[float] = ..., time_to_first_token: _Optional[float] = ...) -> None: ...

class GenerateReply(_message.Message):
    __slots__ = ("text", "token_ids", "mode_used", "fallback_reason", "trace_id", "timings", "bytes_on_wire", "prompt_tokens", "finish_reason", "codec_used", "fused_layers", "sharer_layers")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MODE_USED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    BYTES_ON_WIRE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    CODEC_USED_FIELD_NUMBER: _ClassVar[int]
    FUSED_LAYERS_FIELD_NUMBER: _ClassVar[int]
    SHARER_LAYERS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    mode_used: Mode
    fallback_reason: str
    trace_id: str
    timings: Timings
    bytes_on_wire: int
    prompt_tokens: int
    finish_reason: str
    codec_used: Codec
    fused_layers: _containers.RepeatedScalarFieldContainer[int]
    sharer_layers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., mode_used: _Optional[_Union[Mode, str]] = ..., fallback_reason: _Optional[str] = ..., trace_id: _Optional[str] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., bytes_on_wire: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., finish_reason: _Optional[str] = ..., codec_used: _Optional[_Union[Codec, str]] = ..., fused_layers: _Optional[_Iterable[int]] = ..., sharer_layers: _Optional[_Iterable[int]] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text", "token_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("delta", "reply")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    delta: TextDelta
    reply: GenerateReply
    def __init__(self, delta: _Optional[_Union[TextDelta, _Mapping]] = ..., reply: _Optional[_Union[GenerateReply, _Mapping]] = ...) -> None: ...
