"""The KV-cache codec: one layer's key and value tensors to size-bounded KVMessages and back.

Both services use this module: the sharer encodes its cache as it streams it, the receiver decodes
the stream layer by layer while it fuses. Wire layouts, for a tensor of shape [B, H, N, D]:

- ``CODEC_FP16`` / ``CODEC_BF16``: the tensor's bytes, bit-exact for caches of that dtype.
- ``CODEC_INT8``: keys per channel (each head and dim over all N tokens), values per token (each
  head and token over all D dims). A code q in [0, 255] decodes to ``offset + (q - 127.5) * scale``.
  Keys carry an fp16 offset per channel (their channels have large biases and cost only 4 bytes per
  channel); values are symmetric (offset 0), so their overhead is one fp16 scale per token.
- ``CODEC_INT4``: the same axes cut into groups of ``group_size`` (the last one may be shorter),
  symmetric, one fp16 scale per group, codes q in [0, 15] decoding to ``(q - 7.5) * scale``, packed
  two per byte, low nibble first.

Quantization runs on the tensor's device (a GPU sharer moves only codes and scales to the host);
decoding runs on the CPU and returns CPU tensors.

The data payload holds the codes in [B, H, N, D] order; the scales payload holds the fp16 scales in
group order ([B, H, groups, D] for keys, [B, H, N, groups] for values), then the fp16 offsets.
Each payload is sent LZ4-frame compressed when that shrinks it, else raw, with the CRC-32 of the
bytes as sent, in pieces that keep every serialized KVMessage within ``max_message_bytes``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import lz4.block
import lz4.frame
import torch
import torch.nn.functional as F
from isal import isal_zlib

from c2c.errors import BadRequest, BadStream, WrongModel
from protos import c2c_pb2

# Nibble packing and the wire's fp16/bf16 bytes are little-endian, as on x86-64 and aarch64.
if sys.byteorder != "little":
    raise ImportError("the KV codec needs a little-endian host")

KEY = c2c_pb2.TENSOR_KIND_KEY
VALUE = c2c_pb2.TENSOR_KIND_VALUE

#: Serialized size of a KVMessage(piece=...) beyond its data bytes, with every varint at its widest.
PIECE_OVERHEAD_BYTES = 40
MIN_MESSAGE_BYTES = 256
MAX_MESSAGE_BYTES = 64 << 20
MIN_GROUP_SIZE = 2
MAX_GROUP_SIZE = 4096
#: Refuse headers announcing tensors this large before allocating anything for them.
MAX_TENSOR_ELEMENTS = 1 << 31

# LZ4 is first tried on a few windows of a payload: quantized codes and fp16 mantissas are noise
# to LZ4, and probing 64 KiB costs microseconds where compressing megabytes costs milliseconds.
_LZ4_PROBE_WINDOWS = 4
_LZ4_PROBE_WINDOW_BYTES = 16 << 10
_LZ4_PROBE_MIN_GAIN = 1.02

# int4 scales cover this fraction of each group's absolute maximum: the clipped extreme loses less
# than the finer step gains (2% lower error on Gaussian groups of 32; 0.9 is already worse).
_INT4_CLIP = 0.95

_CODEC_NAMES = {
    c2c_pb2.CODEC_FP16: "fp16",
    c2c_pb2.CODEC_BF16: "bf16",
    c2c_pb2.CODEC_INT8: "int8",
    c2c_pb2.CODEC_INT4: "int4",
}
_PASSTHROUGH_DTYPES = {c2c_pb2.CODEC_FP16: torch.float16, c2c_pb2.CODEC_BF16: torch.bfloat16}
_KIND_NAMES = {KEY: "key", VALUE: "value"}


def codec_name(codec: int) -> str:
    """Short name of a wire layout ("fp16", "int4", ...), for messages and benchmark keys."""
    return _CODEC_NAMES.get(codec, f"unknown codec {codec}")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class InvalidCodecSpec(BadRequest):
    """A requested codec, group size or message limit is not one the codec supports."""


class KVCodecError(BadStream):
    """A KV stream that cannot be decoded; names the layer (when known) and the problem."""

    def __init__(self, problem: str, *, layer: int | None = None) -> None:
        self.layer = layer
        self.problem = problem
        super().__init__(problem if layer is None else f"layer {layer}: {problem}")


class StreamOrderError(KVCodecError):
    """A message where the stream order allows none of its kind: no header first, a second
    header, a piece without its tensor, a scales piece before the data is complete, anything after
    the trailer."""


class LayerOrderError(StreamOrderError):
    """A tensor for another layer than the next one the header lists, a value before its key, or
    a header whose layer list is not the one requested."""


class TruncatedStream(KVCodecError):
    """The stream ended (or its trailer came) before every announced layer was complete."""


class MessageTooLarge(KVCodecError):
    """A serialized message exceeds the agreed ``max_message_bytes``."""


class UnknownCodec(KVCodecError):
    """The header names a wire layout this codec does not know."""


class InvalidHeader(KVCodecError):
    """The header announces something impossible: a zero dimension, a duplicate or out-of-range
    layer, an int4 group size out of range, or tensors too large to hold."""


class ShapeMismatch(KVCodecError):
    """A tensor's shape disagrees with the header, or the header's heads, head dim or positions
    disagree with what the receiver expects."""


class LayoutMismatch(KVCodecError):
    """A tensor's codec (its dtype on the wire) or group size disagrees with the header."""


class PayloadSizeError(KVCodecError):
    """Byte counts that do not add up: a payload size the shape does not imply, a piece at the
    wrong offset or past the end, a payload left incomplete, an LZ4 frame of the wrong length."""


class ChecksumMismatch(KVCodecError):
    """A payload's bytes do not match the CRC-32 its tensor header announced."""


class TrailerMismatch(KVCodecError):
    """The trailer's message or byte counts disagree with what was received."""


class ModelMismatch(WrongModel):
    """The stream comes from another sharer model than the one the receiver's fuser expects."""


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecSpec:
    """How the sharer encodes a stream: wire layout, int4 group size, message size limit."""

    codec: int = c2c_pb2.CODEC_FP16
    group_size: int = 32
    max_message_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.codec not in _CODEC_NAMES:
            raise InvalidCodecSpec(
                f"codec {self.codec} is not a wire layout (fp16, bf16, int8, int4)"
            )
        if not MIN_GROUP_SIZE <= self.group_size <= MAX_GROUP_SIZE:
            raise InvalidCodecSpec(
                f"int4 group size {self.group_size} outside [{MIN_GROUP_SIZE}, {MAX_GROUP_SIZE}]"
            )
        if not MIN_MESSAGE_BYTES <= self.max_message_bytes <= MAX_MESSAGE_BYTES:
            raise InvalidCodecSpec(
                f"max message bytes {self.max_message_bytes} outside "
                f"[{MIN_MESSAGE_BYTES}, {MAX_MESSAGE_BYTES}]"
            )

    @classmethod
    def from_request(
        cls,
        codec: int,
        int4_group_size: int = 0,
        max_message_bytes: int = 0,
        *,
        default_codec: int = c2c_pb2.CODEC_FP16,
    ) -> CodecSpec:
        """Spec for a PrefillRequest's fields, where 0 (unspecified) means the default."""
        return cls(
            codec=codec or default_codec,
            group_size=int4_group_size or cls.group_size,
            max_message_bytes=max_message_bytes or cls.max_message_bytes,
        )

    @property
    def wire_group_size(self) -> int:
        """The group size as headers carry it: 0 unless the layout is int4."""
        return self.group_size if self.codec == c2c_pb2.CODEC_INT4 else 0


@dataclass(frozen=True)
class _Quantization:
    """How one tensor is quantized: along which axis groups run, how long they are."""

    bits: int
    axis: int  # 2: groups run over tokens (per channel), 3: over dims (per token)
    group: int
    affine: bool

    @property
    def center(self) -> float:
        return ((1 << self.bits) - 1) / 2


def _quantization(codec: int, kind: int, shape: Sequence[int], group_size: int) -> _Quantization:
    axis = 2 if kind == KEY else 3
    if codec == c2c_pb2.CODEC_INT8:
        return _Quantization(bits=8, axis=axis, group=shape[axis], affine=kind == KEY)
    return _Quantization(bits=4, axis=axis, group=min(group_size, shape[axis]), affine=False)


def _groups(length: int, group: int) -> int:
    return -(-length // group)


def _raw_sizes(codec: int, kind: int, shape: Sequence[int], group_size: int) -> tuple[int, int]:
    """Bytes of the data and scales payloads before LZ4, implied by layout and shape."""
    numel = shape[0] * shape[1] * shape[2] * shape[3]
    if codec in _PASSTHROUGH_DTYPES:
        return 2 * numel, 0
    quant = _quantization(codec, kind, shape, group_size)
    groups = numel // shape[quant.axis] * _groups(shape[quant.axis], quant.group)
    data = numel if quant.bits == 8 else -(-numel // 2)
    return data, 2 * groups * (2 if quant.affine else 1)


def _lz4_bound(raw_bytes: int) -> int:
    """Largest LZ4 frame a payload of raw_bytes can become (LZ4's worst case plus framing)."""
    return raw_bytes + raw_bytes // 255 + 1024


def _grouped(tensor: torch.Tensor, quant: _Quantization) -> torch.Tensor:
    """5-D view [.., groups, group, ..] of a 4-D tensor, zero-padded to whole groups."""
    length = tensor.shape[quant.axis]
    groups = _groups(length, quant.group)
    pad = groups * quant.group - length
    if pad:
        tensor = F.pad(tensor, (0, 0, 0, pad) if quant.axis == 2 else (0, pad))
    shape = list(tensor.shape)
    shape[quant.axis : quant.axis + 1] = [groups, quant.group]
    return tensor.reshape(shape)


def _ungrouped(grouped: torch.Tensor, shape: Sequence[int], quant: _Quantization) -> torch.Tensor:
    padded = list(shape)
    padded[quant.axis] = grouped.shape[quant.axis] * quant.group
    tensor = grouped.reshape(padded)
    if padded[quant.axis] != shape[quant.axis]:
        tensor = tensor.narrow(quant.axis, 0, shape[quant.axis]).contiguous()
    return tensor


def _quantize(
    tensor: torch.Tensor, quant: _Quantization
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Codes (int16, tensor's shape), fp16 scales and fp16 offsets (affine only), per group."""
    grouped = _grouped(tensor.to(torch.float32, copy=True), quant)
    reduce_dim = quant.axis + 1
    low = grouped.amin(dim=reduce_dim, keepdim=True)
    high = grouped.amax(dim=reduce_dim, keepdim=True)
    if quant.affine:
        offset = ((high + low) / 2).half()
        scale = ((high - low) / (2 * quant.center)).half()
    else:
        offset = None
        clip = _INT4_CLIP if quant.bits == 4 else 1.0
        scale = (torch.maximum(high, -low) * (clip / quant.center)).half()
    # Quantize against the fp16-rounded scale and offset, exactly what the receiver will use.
    inverse = scale.float().reciprocal().nan_to_num_(posinf=0.0)  # a constant group: all zero
    # Adding 0.5 here and truncating below rounds to the nearest code. In-place steps and an
    # int16 detour: measured faster on CPU than addcmul or a direct uint8 cast.
    grouped.mul_(inverse)
    if offset is None:
        grouped.add_(quant.center + 0.5)
    else:
        grouped.add_((quant.center + 0.5) - offset.float() * inverse)
    grouped.clamp_(0, 2 * quant.center)
    return _ungrouped(grouped.to(torch.int16), tensor.shape, quant), scale, offset


def _dequantize(
    codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, quant: _Quantization
) -> torch.Tensor:
    """fp16 values of uint8 codes shaped [B, H, N, D], given their groups' scales and offsets."""
    step = scale.float()
    base = -quant.center * step
    if offset is not None:
        base += offset.float()
    values = _grouped(codes, quant).float()
    values.mul_(step).add_(base)
    return _ungrouped(values.half(), codes.shape, quant)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """int16 codes in [0, 15] -> uint8, two per byte, low nibble first (little-endian host)."""
    flat = codes.reshape(-1)
    if flat.numel() % 2:
        flat = torch.cat((flat, flat.new_zeros(1)))
    pairs = flat.view(torch.int32)  # first code in the low half, second in the high half
    return (pairs | (pairs >> 12)).to(torch.uint8)


def _unpack_nibbles(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """uint8 packed codes -> numel uint8 codes, the inverse of _pack_nibbles."""
    wide = packed.to(torch.int16)
    return ((wide | (wide << 4)) & 0x0F0F).view(torch.uint8)[:numel]


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Payload:
    """One payload as it goes on the wire."""

    wire: memoryview
    raw_bytes: int
    lz4: bool
    crc32: int

    def info(self) -> c2c_pb2.PayloadInfo:
        return c2c_pb2.PayloadInfo(
            encoded_bytes=self.wire.nbytes, raw_bytes=self.raw_bytes, lz4=self.lz4, crc32=self.crc32
        )


def _lz4_may_shrink(raw: memoryview) -> bool:
    size = raw.nbytes
    window = _LZ4_PROBE_WINDOW_BYTES
    if size <= _LZ4_PROBE_WINDOWS * window:
        return True
    stride = (size - window) // (_LZ4_PROBE_WINDOWS - 1)
    windows = [raw[i * stride : i * stride + window] for i in range(_LZ4_PROBE_WINDOWS)]
    compressed = sum(len(lz4.block.compress(w, store_size=False)) for w in windows)
    return compressed * _LZ4_PROBE_MIN_GAIN <= _LZ4_PROBE_WINDOWS * window


def _payload(raw: memoryview) -> _Payload:
    wire, compressed = raw, False
    if raw.nbytes and _lz4_may_shrink(raw):
        frame = lz4.frame.compress(raw, block_size=lz4.frame.BLOCKSIZE_MAX4MB)
        if len(frame) < raw.nbytes:
            wire, compressed = memoryview(frame), True
    return _Payload(wire=wire, raw_bytes=raw.nbytes, lz4=compressed, crc32=isal_zlib.crc32(wire))


@dataclass(frozen=True)
class EncodedTensor:
    """One tensor's payloads, ready to be cut into messages."""

    layer: int
    kind: int
    shape: tuple[int, int, int, int]
    spec: CodecSpec
    data: _Payload
    scales: _Payload

    @property
    def encoded_bytes(self) -> int:
        return self.data.wire.nbytes + self.scales.wire.nbytes

    @property
    def raw_bytes(self) -> int:
        """Bytes before LZ4 (the `lz4_gain` numerator)."""
        return self.data.raw_bytes + self.scales.raw_bytes

    def messages(self) -> Iterator[c2c_pb2.KVMessage]:
        """The tensor header, then data pieces, then scales pieces, each within the size limit."""
        yield c2c_pb2.KVMessage(
            tensor=c2c_pb2.KVTensorHeader(
                layer=self.layer,
                kind=self.kind,
                shape=self.shape,
                codec=self.spec.codec,
                group_size=self.spec.wire_group_size,
                data=self.data.info(),
                scales=self.scales.info(),
            )
        )
        piece_bytes = self.spec.max_message_bytes - PIECE_OVERHEAD_BYTES
        for is_scales, payload in ((False, self.data), (True, self.scales)):
            wire = payload.wire
            for offset in range(0, wire.nbytes, piece_bytes):
                piece = c2c_pb2.KVPiece(
                    layer=self.layer,
                    kind=self.kind,
                    scales=is_scales,
                    offset=offset,
                    data=bytes(wire[offset : offset + piece_bytes]),
                )
                yield c2c_pb2.KVMessage(piece=piece)


def _check_tensor(tensor: torch.Tensor) -> tuple[int, int, int, int]:
    if tensor.dim() != 4 or not tensor.is_floating_point() or tensor.numel() == 0:
        raise ValueError(
            f"KV tensors must be non-empty floating [B, H, N, D], got {tensor.dtype} "
            f"{tuple(tensor.shape)}"
        )
    b, h, n, d = tensor.shape
    return b, h, n, d


def quantize_tensor(layer: int, kind: int, tensor: torch.Tensor, spec: CodecSpec) -> EncodedTensor:
    """Quantize (or convert), LZ4 and checksum one [B, H, N, D] tensor of one layer."""
    if kind not in _KIND_NAMES:
        raise ValueError(f"tensor kind {kind} is neither TENSOR_KIND_KEY nor TENSOR_KIND_VALUE")
    shape = _check_tensor(tensor)
    tensor = tensor.detach()
    if spec.codec in _PASSTHROUGH_DTYPES:
        data, scales = tensor.to(_PASSTHROUGH_DTYPES[spec.codec]), torch.empty(0, dtype=torch.uint8)
    else:
        quant = _quantization(spec.codec, kind, shape, spec.group_size)
        codes, scale, offset = _quantize(tensor, quant)
        data = codes.to(torch.uint8) if quant.bits == 8 else _pack_nibbles(codes)
        scales = scale if offset is None else torch.cat((scale.reshape(-1), offset.reshape(-1)))
    return EncodedTensor(
        layer=layer,
        kind=kind,
        shape=shape,
        spec=spec,
        data=_payload(_as_bytes(data)),
        scales=_payload(_as_bytes(scales)),
    )


def encode_tensor(
    layer: int, kind: int, tensor: torch.Tensor, spec: CodecSpec
) -> Iterator[c2c_pb2.KVMessage]:
    """The messages of one tensor: its tensor header, then its pieces."""
    yield from quantize_tensor(layer, kind, tensor, spec).messages()


def encode_layer(
    layer: int, key: torch.Tensor, value: torch.Tensor, spec: CodecSpec
) -> Iterator[c2c_pb2.KVMessage]:
    """The messages of one layer: the key tensor's, then the value tensor's."""
    yield from encode_tensor(layer, KEY, key, spec)
    yield from encode_tensor(layer, VALUE, value, spec)


class KVStreamEncoder:
    """Builds one Prefill stream: header, layers in the announced order, and a trailer whose
    counts (messages, bytes, encode time) are right by construction."""

    def __init__(
        self,
        spec: CodecSpec,
        *,
        model_fingerprint: str,
        num_layers: int,
        layers: Sequence[int],
        num_kv_heads: int,
        head_dim: int,
        num_positions: int,
        source_dtype: str,
        batch: int = 1,
    ) -> None:
        self.spec = spec
        self._header = c2c_pb2.KVHeader(
            model_fingerprint=model_fingerprint,
            num_layers=num_layers,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            num_positions=num_positions,
            batch=batch,
            codec=spec.codec,
            int4_group_size=spec.wire_group_size,
            layers=list(layers),
            source_dtype=source_dtype,
        )
        self._shape = (batch, num_kv_heads, num_positions, head_dim)
        self._next = 0
        self.messages = 0
        self.raw_bytes = 0
        self.encoded_bytes = 0
        self.encode_ms = 0.0

    def header(self) -> c2c_pb2.KVMessage:
        message = c2c_pb2.KVMessage(header=self._header)
        if message.ByteSize() > self.spec.max_message_bytes:
            raise InvalidCodecSpec(
                f"max message bytes {self.spec.max_message_bytes} cannot hold the stream header "
                f"({message.ByteSize()} bytes)"
            )
        self.messages += 1
        return message

    def encode_layer(
        self, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> Iterator[c2c_pb2.KVMessage]:
        """Messages of the next announced layer; refuses a layer or shape the header did not say."""
        layers = self._header.layers
        if self._next >= len(layers) or layers[self._next] != layer:
            expected = layers[self._next] if self._next < len(layers) else "none"
            raise ValueError(f"layer {layer} encoded out of order: the header says {expected} next")
        for kind, tensor in ((KEY, key), (VALUE, value)):
            if tuple(tensor.shape) != self._shape:
                raise ValueError(
                    f"layer {layer} {_KIND_NAMES[kind]} has shape {tuple(tensor.shape)}, "
                    f"the header says {self._shape}"
                )
        self._next += 1
        for kind, tensor in ((KEY, key), (VALUE, value)):
            start = time.perf_counter()
            encoded = quantize_tensor(layer, kind, tensor, self.spec)
            self.encode_ms += (time.perf_counter() - start) * 1e3
            self.raw_bytes += 2 * tensor.numel()
            self.encoded_bytes += encoded.encoded_bytes
            for message in encoded.messages():
                self.messages += 1
                yield message

    def trailer(
        self,
        *,
        tokenize_ms: float = 0.0,
        prefill_ms: float = 0.0,
        total_ms: float = 0.0,
        sharer_tokens: int = 0,
    ) -> c2c_pb2.KVMessage:
        return c2c_pb2.KVMessage(
            trailer=c2c_pb2.KVTrailer(
                tokenize_ms=tokenize_ms,
                prefill_ms=prefill_ms,
                encode_ms=self.encode_ms,
                total_ms=total_ms,
                raw_bytes=self.raw_bytes,
                encoded_bytes=self.encoded_bytes,
                messages=self.messages,
                sharer_tokens=sharer_tokens,
            )
        )


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedShape:
    """What the receiver knows the stream must carry; None leaves a field unchecked."""

    model_fingerprint: str | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    num_positions: int | None = None
    codec: int | None = None  # the layout the receiver asked for


@dataclass
class DecodedLayer:
    """One layer's cache, [B, H, N, D]: fp16, or bf16 for the bf16 layout."""

    layer: int
    key: torch.Tensor
    value: torch.Tensor


class _IncomingPayload:
    """Collects one payload's pieces in order, checking offsets and the running CRC-32."""

    def __init__(self, info: c2c_pb2.PayloadInfo, what: str, layer: int) -> None:
        self.info = info
        self.what = what
        self.layer = layer
        self.buffer = bytearray(info.encoded_bytes)
        self.received = 0
        self.crc32 = 0
        self._raw: bytearray | None = None

    @property
    def complete(self) -> bool:
        return self.received == self.info.encoded_bytes

    def add(self, offset: int, data: bytes) -> None:
        if offset != self.received:
            raise PayloadSizeError(
                f"{self.what} piece at offset {offset}, expected offset {self.received}",
                layer=self.layer,
            )
        end = offset + len(data)
        if not data or end > self.info.encoded_bytes:
            raise PayloadSizeError(
                f"{self.what} piece of {len(data)} bytes at offset {offset} does not fit a payload "
                f"of {self.info.encoded_bytes} bytes",
                layer=self.layer,
            )
        self.buffer[offset:end] = data
        self.crc32 = isal_zlib.crc32(data, self.crc32)
        self.received = end

    def raw(self) -> bytearray:
        """The payload's bytes after checksum and LZ4, exactly raw_bytes long."""
        if self._raw is None:
            self._raw = self._unpack()
        return self._raw

    def _unpack(self) -> bytearray:
        if self.crc32 != self.info.crc32:
            raise ChecksumMismatch(
                f"{self.what} payload CRC-32 is {self.crc32:#010x}, "
                f"its tensor header says {self.info.crc32:#010x}",
                layer=self.layer,
            )
        if not self.info.lz4:
            return self.buffer
        decompressor = lz4.frame.LZ4FrameDecompressor(return_bytearray=True)
        try:
            raw = decompressor.decompress(self.buffer, max_length=self.info.raw_bytes)
        except RuntimeError as error:
            raise PayloadSizeError(
                f"{self.what} payload is not a valid LZ4 frame ({error})", layer=self.layer
            ) from None
        if len(raw) != self.info.raw_bytes or not decompressor.eof:
            raise PayloadSizeError(
                f"{self.what} payload's LZ4 frame does not hold exactly "
                f"{self.info.raw_bytes} bytes",
                layer=self.layer,
            )
        return raw


class _IncomingTensor:
    """One announced tensor while its pieces arrive."""

    def __init__(self, header: c2c_pb2.KVTensorHeader, group_size: int) -> None:
        self.header = header
        self.group_size = group_size
        name = f"{_KIND_NAMES[header.kind]}"
        self.data = _IncomingPayload(header.data, f"{name} data", header.layer)
        self.scales = _IncomingPayload(header.scales, f"{name} scales", header.layer)

    @property
    def complete(self) -> bool:
        return self.data.complete and self.scales.complete

    def describe(self) -> str:
        return (
            f"{_KIND_NAMES[self.header.kind]} data {self.data.received}/"
            f"{self.data.info.encoded_bytes} bytes, scales {self.scales.received}/"
            f"{self.scales.info.encoded_bytes} bytes"
        )

    def add(self, piece: c2c_pb2.KVPiece, data: bytes) -> None:
        """Takes one piece; `data` is piece.data, read once (each read copies it)."""
        header = self.header
        if piece.layer != header.layer or piece.kind != header.kind:
            raise StreamOrderError(
                f"piece for layer {piece.layer} {_KIND_NAMES.get(piece.kind, piece.kind)} "
                f"inside the {_KIND_NAMES[header.kind]} tensor",
                layer=header.layer,
            )
        if piece.scales != self.data.complete:
            expected = "data" if not self.data.complete else "scales"
            raise StreamOrderError(
                f"{'scales' if piece.scales else 'data'} piece where a {expected} piece was due "
                f"({self.describe()})",
                layer=header.layer,
            )
        (self.scales if piece.scales else self.data).add(piece.offset, data)
        if not piece.scales and self.data.complete:
            self.data.raw()  # a corrupt data payload is reported before its scales arrive

    def tensor(self) -> torch.Tensor:
        header = self.header
        shape = tuple(header.shape)
        data = self.data.raw()
        if header.codec in _PASSTHROUGH_DTYPES:
            return torch.frombuffer(data, dtype=_PASSTHROUGH_DTYPES[header.codec]).view(shape)
        quant = _quantization(header.codec, header.kind, shape, self.group_size)
        codes = torch.frombuffer(data, dtype=torch.uint8)
        numel = shape[0] * shape[1] * shape[2] * shape[3]
        if quant.bits == 4:
            codes = _unpack_nibbles(codes, numel)
        scales = torch.frombuffer(self.scales.raw(), dtype=torch.float16)
        group_shape = list(shape)
        group_shape[quant.axis : quant.axis + 1] = [_groups(shape[quant.axis], quant.group), 1]
        scale, offset = scales, None
        if quant.affine:
            scale, offset = scales.chunk(2)
            offset = offset.view(group_shape)
        return _dequantize(codes.view(shape), scale.view(group_shape), offset, quant)


class KVStreamDecoder:
    """Decodes one Prefill stream as it arrives, validating every message against the header.

    Holds at most one layer (its decoded key, its value's pieces) plus the message in hand. It is
    fed messages and never reads a socket, so it cannot hang; `finish` says whether the stream was
    complete. Every problem raises a KVCodecError subclass naming the layer.
    """

    def __init__(
        self,
        expected_layers: Sequence[int] | None = None,
        *,
        max_message_bytes: int = 1 << 20,
        expected: ExpectedShape | None = None,
    ) -> None:
        self.expected_layers = None if expected_layers is None else list(expected_layers)
        self.max_message_bytes = max_message_bytes
        self.expected = expected or ExpectedShape()
        self._header: c2c_pb2.KVHeader | None = None
        self._trailer: c2c_pb2.KVTrailer | None = None
        self._next = 0  # index into the header's layers of the layer being received
        self._key: torch.Tensor | None = None
        self._tensor: _IncomingTensor | None = None
        self.messages = 0
        self.encoded_bytes = 0

    @property
    def header(self) -> c2c_pb2.KVHeader | None:
        return self._header

    @property
    def trailer(self) -> c2c_pb2.KVTrailer | None:
        return self._trailer

    @property
    def done(self) -> bool:
        return self._trailer is not None

    def _current_layer(self) -> int | None:
        if self._header is None or self._next >= len(self._header.layers):
            return None
        return self._header.layers[self._next]

    def feed(self, message: c2c_pb2.KVMessage) -> DecodedLayer | None:
        """Takes the next message; returns a layer when its value tensor completes it."""
        size = message.ByteSize()
        if size > self.max_message_bytes:
            raise MessageTooLarge(
                f"message of {size} bytes exceeds the limit of {self.max_message_bytes}",
                layer=self._current_layer(),
            )
        body = message.WhichOneof("body")
        if self._trailer is not None:
            raise StreamOrderError(f"{body} message after the trailer")
        if body == "header":
            self._on_header(message.header)
        elif self._header is None:
            raise StreamOrderError(f"stream starts with a {body} message instead of the header")
        elif body == "tensor":
            self._on_tensor(message.tensor)
        elif body == "piece":
            layer = self._on_piece(message.piece)
            self.messages += 1
            return layer
        elif body == "trailer":
            self._on_trailer(message.trailer)
            return None
        else:
            raise StreamOrderError("message with no body", layer=self._current_layer())
        self.messages += 1
        return None

    def finish(self) -> None:
        """Call when the stream ends; raises TruncatedStream unless the trailer came."""
        if self._header is None:
            raise TruncatedStream("stream ended before its header")
        if self._trailer is None:
            raise TruncatedStream(
                self._missing("stream ended without a trailer"), layer=self._current_layer()
            )

    def _missing(self, what: str) -> str:
        assert self._header is not None
        missing = list(self._header.layers[self._next :])
        where = f" inside layer {missing[0]} ({self._tensor.describe()})" if self._tensor else ""
        return f"{what}{where}; layers not complete: {missing}"

    def _on_header(self, header: c2c_pb2.KVHeader) -> None:
        if self._header is not None:
            raise StreamOrderError("second header", layer=self._current_layer())
        if header.codec not in _CODEC_NAMES:
            name = c2c_pb2.Codec.Name(header.codec) if header.codec == 0 else str(header.codec)
            raise UnknownCodec(f"header codec {name} is not a wire layout (fp16, bf16, int8, int4)")
        dims = {
            "batch": header.batch,
            "num_kv_heads": header.num_kv_heads,
            "num_positions": header.num_positions,
            "head_dim": header.head_dim,
        }
        zero = [name for name, value in dims.items() if value == 0]
        if zero:
            raise InvalidHeader(f"header has zero {', '.join(zero)}")
        if header.batch * header.num_kv_heads * header.num_positions * header.head_dim > (
            MAX_TENSOR_ELEMENTS
        ):
            raise InvalidHeader(f"header announces tensors over {MAX_TENSOR_ELEMENTS} elements")
        if header.codec == c2c_pb2.CODEC_INT4 and not (
            MIN_GROUP_SIZE <= header.int4_group_size <= MAX_GROUP_SIZE
        ):
            raise InvalidHeader(
                f"header int4 group size {header.int4_group_size} outside "
                f"[{MIN_GROUP_SIZE}, {MAX_GROUP_SIZE}]"
            )
        layers = list(header.layers)
        if len(set(layers)) != len(layers) or any(x >= header.num_layers for x in layers):
            raise InvalidHeader(
                f"header layers {layers} repeat a layer or exceed the model's {header.num_layers}"
            )
        if self.expected_layers is not None and layers != self.expected_layers:
            raise LayerOrderError(f"header lists layers {layers}, requested {self.expected_layers}")
        expected = self.expected
        fingerprint = expected.model_fingerprint
        if fingerprint is not None and header.model_fingerprint != fingerprint:
            raise ModelMismatch(
                f"KV stream is from model {header.model_fingerprint!r}, expected {fingerprint!r}"
            )
        if expected.codec is not None and header.codec != expected.codec:
            raise LayoutMismatch(
                f"header codec {codec_name(header.codec)} is not the requested "
                f"{codec_name(expected.codec)}"
            )
        for name in ("num_kv_heads", "head_dim", "num_positions"):
            want = getattr(expected, name)
            if want is not None and dims[name] != want:
                raise ShapeMismatch(f"header {name} is {dims[name]}, expected {want}")
        self._header = header

    def _on_tensor(self, tensor: c2c_pb2.KVTensorHeader) -> None:
        header = self._header
        assert header is not None
        layer = self._current_layer()
        if self._tensor is not None:
            raise PayloadSizeError(
                f"tensor header for layer {tensor.layer} while the previous payload is incomplete "
                f"({self._tensor.describe()})",
                layer=layer,
            )
        if layer is None:
            raise StreamOrderError(
                f"tensor for layer {tensor.layer} after the last announced layer "
                f"{list(header.layers)}"
            )
        if tensor.layer != layer:
            raise LayerOrderError(
                f"tensor for layer {tensor.layer} arrived where layer {layer} was due", layer=layer
            )
        want_kind = KEY if self._key is None else VALUE
        if tensor.kind != want_kind:
            got = _KIND_NAMES.get(tensor.kind, f"unknown kind {tensor.kind}")
            raise LayerOrderError(
                f"{got} tensor arrived where the {_KIND_NAMES[want_kind]} was due", layer=layer
            )
        if tensor.codec != header.codec:
            raise LayoutMismatch(
                f"{_KIND_NAMES[tensor.kind]} tensor codec {codec_name(tensor.codec)} disagrees "
                f"with the header's {codec_name(header.codec)}",
                layer=layer,
            )
        group_size = header.int4_group_size if header.codec == c2c_pb2.CODEC_INT4 else 0
        if tensor.group_size != group_size:
            raise LayoutMismatch(
                f"{_KIND_NAMES[tensor.kind]} group size {tensor.group_size} disagrees with the "
                f"header's {group_size}",
                layer=layer,
            )
        shape = [header.batch, header.num_kv_heads, header.num_positions, header.head_dim]
        if list(tensor.shape) != shape:
            raise ShapeMismatch(
                f"{_KIND_NAMES[tensor.kind]} shape {list(tensor.shape)} disagrees with the "
                f"header's {shape}",
                layer=layer,
            )
        raw_sizes = _raw_sizes(header.codec, tensor.kind, shape, group_size)
        for what, info, raw in (
            ("data", tensor.data, raw_sizes[0]),
            ("scales", tensor.scales, raw_sizes[1]),
        ):
            bound = _lz4_bound(raw) if info.lz4 else raw
            if (
                info.raw_bytes != raw
                or info.encoded_bytes > bound
                or (raw and not info.encoded_bytes)
            ):
                raise PayloadSizeError(
                    f"{_KIND_NAMES[tensor.kind]} {what} payload announces {info.encoded_bytes} "
                    f"bytes on the wire and {info.raw_bytes} raw, the shape implies {raw} raw",
                    layer=layer,
                )
        self._tensor = _IncomingTensor(tensor, header.int4_group_size)

    def _on_piece(self, piece: c2c_pb2.KVPiece) -> DecodedLayer | None:
        incoming = self._tensor
        if incoming is None:
            raise StreamOrderError(
                f"piece for layer {piece.layer} without a tensor header before it",
                layer=self._current_layer(),
            )
        data = piece.data
        self.encoded_bytes += len(data)
        incoming.add(piece, data)
        if not incoming.complete:
            return None
        tensor = incoming.tensor()
        self._tensor = None
        if incoming.header.kind == KEY:
            self._key = tensor
            return None
        key, self._key = self._key, None
        assert key is not None
        self._next += 1
        return DecodedLayer(layer=incoming.header.layer, key=key, value=tensor)

    def _on_trailer(self, trailer: c2c_pb2.KVTrailer) -> None:
        assert self._header is not None
        if self._next < len(self._header.layers):
            raise TruncatedStream(
                self._missing("trailer arrived early"), layer=self._current_layer()
            )
        if trailer.messages != self.messages or trailer.encoded_bytes != self.encoded_bytes:
            raise TrailerMismatch(
                f"trailer counts {trailer.messages} messages and {trailer.encoded_bytes} payload "
                f"bytes, received {self.messages} and {self.encoded_bytes}"
            )
        self._trailer = trailer
