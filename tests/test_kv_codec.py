"""The KV codec's contract: what a sharer encodes, a receiver decodes, and every damaged or
disordered stream is refused with an exception that names the layer and the problem."""

from __future__ import annotations

import zlib

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c2c.errors import BadRequest, WrongModel
from c2c.kv_codec import (
    KEY,
    VALUE,
    ChecksumMismatch,
    CodecSpec,
    DecodedLayer,
    ExpectedShape,
    InvalidCodecSpec,
    InvalidHeader,
    KVCodecError,
    KVStreamDecoder,
    KVStreamEncoder,
    LayerOrderError,
    LayoutMismatch,
    MessageTooLarge,
    ModelMismatch,
    PayloadSizeError,
    ShapeMismatch,
    StreamOrderError,
    TrailerMismatch,
    TruncatedStream,
    UnknownCodec,
    encode_tensor,
)
from protos import c2c_pb2

FP16, BF16, INT8, INT4 = (
    c2c_pb2.CODEC_FP16,
    c2c_pb2.CODEC_BF16,
    c2c_pb2.CODEC_INT8,
    c2c_pb2.CODEC_INT4,
)
FINGERPRINT = "sharer-model-fingerprint"
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_layers(
    shape: tuple[int, int, int, int],
    layers: list[int],
    seed: int = 0,
    dtype=torch.float16,
    transposed: bool = False,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Random caches; `transposed` ones are [B, N, H, D] viewed as [B, H, N, D], as attention
    layers often leave them."""
    generator = torch.Generator().manual_seed(seed)
    batch, heads, tokens, dim = shape

    def tensor() -> torch.Tensor:
        if transposed:
            stored = torch.randn(batch, tokens, heads, dim, generator=generator)
            return stored.to(dtype).transpose(1, 2)
        return torch.randn(shape, generator=generator).to(dtype)

    return {layer: (tensor(), tensor()) for layer in layers}


def encode_stream(
    spec: CodecSpec, cache: dict[int, tuple[torch.Tensor, torch.Tensor]], num_layers: int = 8
) -> list[c2c_pb2.KVMessage]:
    batch, heads, tokens, dim = next(iter(cache.values()))[0].shape
    encoder = KVStreamEncoder(
        spec,
        model_fingerprint=FINGERPRINT,
        num_layers=num_layers,
        layers=list(cache),
        num_kv_heads=heads,
        head_dim=dim,
        num_positions=tokens,
        source_dtype="float16",
        batch=batch,
    )
    messages = [encoder.header()]
    for layer, (key, value) in cache.items():
        messages.extend(encoder.encode_layer(layer, key, value))
    messages.append(encoder.trailer(prefill_ms=1.0, total_ms=2.0, sharer_tokens=tokens))
    return messages


def decode_stream(messages: list[c2c_pb2.KVMessage], **decoder_options) -> list[DecodedLayer]:
    decoder = KVStreamDecoder(**decoder_options)
    layers = [layer for m in messages if (layer := decoder.feed(m)) is not None]
    decoder.finish()
    return layers


def copy(message: c2c_pb2.KVMessage) -> c2c_pb2.KVMessage:
    duplicate = c2c_pb2.KVMessage()
    duplicate.CopyFrom(message)
    return duplicate


def body(message: c2c_pb2.KVMessage) -> str:
    return message.WhichOneof("body")


def feed_all(messages: list[c2c_pb2.KVMessage], **decoder_options) -> KVStreamDecoder:
    decoder = KVStreamDecoder(**decoder_options)
    for message in messages:
        decoder.feed(message)
    return decoder


shapes = st.tuples(
    st.integers(1, 2), st.integers(1, 3), st.integers(1, 70), st.integers(1, 40)
).map(tuple)


# --- roundtrips ------------------------------------------------------------------------------


@PROPERTY
@given(
    shape=shapes,
    codec=st.sampled_from([FP16, BF16]),
    limit=st.sampled_from([256, 1000, 1 << 20]),
    seed=st.integers(0, 2**16),
    transposed=st.booleans(),
)
def test_fp16_and_bf16_roundtrip_bit_exact(shape, codec, limit, seed, transposed) -> None:
    dtype = torch.float16 if codec == FP16 else torch.bfloat16
    cache = make_layers(shape, [1, 4], seed, dtype, transposed)
    messages = encode_stream(CodecSpec(codec=codec, max_message_bytes=limit), cache)
    decoded = decode_stream(messages, expected_layers=[1, 4], max_message_bytes=limit)
    assert [d.layer for d in decoded] == [1, 4]
    for d in decoded:
        key, value = cache[d.layer]
        assert d.key.dtype == dtype and d.value.dtype == dtype
        assert torch.equal(d.key.view(torch.int16), key.view(torch.int16))
        assert torch.equal(d.value.view(torch.int16), value.view(torch.int16))


def _within_quantization_bound(
    decoded: torch.Tensor, original: torch.Tensor, axis: int, tolerance: float
) -> bool:
    """|x' - x| <= tolerance * max|x| over the quantization axis (keys: per channel over tokens,
    values: per token over dims); a group's maximum never exceeds its row's."""
    original = original.float()
    row_max = original.abs().amax(dim=axis, keepdim=True)
    error = (decoded.float() - original).abs()
    return bool((error <= tolerance * row_max + 1e-6).all())


@PROPERTY
@given(
    shape=shapes,
    codec=st.sampled_from([INT8, INT4]),
    group_size=st.integers(2, 64),
    limit=st.sampled_from([256, 1 << 20]),
    seed=st.integers(0, 2**16),
    source=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
    transposed=st.booleans(),
)
def test_int8_and_int4_roundtrip_within_their_step(
    shape, codec, group_size, limit, seed, source, transposed
) -> None:
    cache = make_layers(shape, [0, 3], seed, source, transposed)
    spec = CodecSpec(codec=codec, group_size=group_size, max_message_bytes=limit)
    decoded = decode_stream(encode_stream(spec, cache), max_message_bytes=limit)
    # int8: half a step of 1/255 of the range, plus fp16 rounding; int4: half a step of 1/15 of
    # the range over 0.95 of the maximum, or the 5% clipped off the extreme.
    tolerance = 1 / 255 + 2**-10 if codec == INT8 else 0.07
    for d in decoded:
        key, value = cache[d.layer]
        assert d.key.dtype == torch.float16 and d.key.shape == key.shape
        assert _within_quantization_bound(d.key, key, axis=2, tolerance=tolerance)
        assert _within_quantization_bound(d.value, value, axis=3, tolerance=tolerance)


def test_int8_keys_quantized_per_channel_keep_small_channels_exact_despite_an_outlier() -> None:
    key = torch.randn(1, 2, 256, 64)
    key[:, :, :, 5] *= 300.0  # one outlier channel, as real keys have
    (_, value) = make_layers((1, 2, 256, 64), [0])[0]
    decoded = decode_stream(encode_stream(CodecSpec(codec=INT8), {0: (key.half(), value)}))[0]
    others = [c for c in range(64) if c != 5]
    small = key[..., others]
    error = (decoded.key[..., others].float() - small.half().float()).norm() / small.norm()
    assert error < 0.01


def test_int8_and_int4_shrink_a_layer_to_about_half_and_a_quarter() -> None:
    cache = make_layers((1, 8, 512, 128), [0])
    fp16_bytes = 2 * 2 * 8 * 512 * 128
    for codec, limit in ((INT8, 0.52), (INT4, 0.29)):
        layer_messages = encode_stream(CodecSpec(codec=codec), cache)[1:-1]
        assert sum(m.ByteSize() for m in layer_messages) / fp16_bytes <= limit


def test_layer_spans_many_messages_each_within_a_small_limit() -> None:
    cache = make_layers((1, 2, 64, 32), [2])
    messages = encode_stream(CodecSpec(codec=FP16, max_message_bytes=256), cache)
    assert max(m.ByteSize() for m in messages) <= 256
    fp16_bytes = 2 * (2 * 64 * 32) * 2  # key and value
    assert sum(body(m) == "piece" for m in messages) > fp16_bytes // 256
    (decoded,) = decode_stream(messages, max_message_bytes=256)
    assert torch.equal(decoded.key, cache[2][0]) and torch.equal(decoded.value, cache[2][1])


def test_each_layer_is_returned_as_soon_as_its_value_is_complete() -> None:
    cache = make_layers((1, 2, 40, 16), [0, 1, 2])
    messages = encode_stream(CodecSpec(codec=INT4, max_message_bytes=512), cache)
    decoder = KVStreamDecoder()
    returned_at = {}
    for index, message in enumerate(messages):
        layer = decoder.feed(message)
        if layer is not None:
            returned_at[layer.layer] = index
    last_piece = {
        m.piece.layer: i
        for i, m in enumerate(messages)
        if body(m) == "piece" and m.piece.kind == VALUE
    }
    assert returned_at == last_piece


def test_compressible_payload_travels_lz4_and_noise_travels_raw() -> None:
    zeros = torch.zeros(1, 4, 256, 64, dtype=torch.float16)
    noise = torch.randn(1, 4, 256, 64).half()
    spec = CodecSpec(codec=FP16)
    compressible = next(encode_tensor(0, KEY, zeros, spec)).tensor.data
    incompressible = next(encode_tensor(0, KEY, noise, spec)).tensor.data
    assert compressible.lz4 and compressible.encoded_bytes < compressible.raw_bytes // 10
    assert not incompressible.lz4 and incompressible.encoded_bytes == incompressible.raw_bytes
    (decoded,) = decode_stream(encode_stream(spec, {0: (zeros, noise)}))
    assert torch.equal(decoded.key, zeros) and torch.equal(decoded.value, noise)


def test_payload_checksums_are_plain_crc32_of_the_bytes_on_the_wire() -> None:
    key = torch.randn(1, 2, 300, 64).half()
    tensor, *pieces = encode_tensor(3, KEY, key, CodecSpec(codec=INT8, max_message_bytes=4096))
    for payload, is_scales in ((tensor.tensor.data, False), (tensor.tensor.scales, True)):
        wire = b"".join(m.piece.data for m in pieces if m.piece.scales == is_scales)
        assert len(wire) == payload.encoded_bytes
        assert zlib.crc32(wire) == payload.crc32


# --- damaged streams -------------------------------------------------------------------------


@PROPERTY
@given(data=st.data(), codec=st.sampled_from([FP16, INT8, INT4]))
def test_single_flipped_byte_in_any_payload_is_a_checksum_mismatch_naming_the_layer(
    data, codec
) -> None:
    cache = make_layers((1, 2, 48, 32), [3, 6], seed=1)
    messages = encode_stream(CodecSpec(codec=codec, max_message_bytes=1024), cache)
    pieces = [i for i, m in enumerate(messages) if body(m) == "piece"]
    index = data.draw(st.sampled_from(pieces), label="piece")
    damaged = copy(messages[index])
    payload = bytearray(damaged.piece.data)
    position = data.draw(st.integers(0, len(payload) - 1), label="byte")
    payload[position] ^= data.draw(st.integers(1, 255), label="xor")
    damaged.piece.data = bytes(payload)
    messages[index] = damaged
    with pytest.raises(ChecksumMismatch) as caught:
        decode_stream(messages)
    assert caught.value.layer == damaged.piece.layer
    which = "scales" if damaged.piece.scales else "data"
    assert f"layer {damaged.piece.layer}: " in str(caught.value) and which in str(caught.value)


MUTABLE_FIELDS = {
    "header": [
        "num_layers",
        "num_kv_heads",
        "head_dim",
        "num_positions",
        "batch",
        "codec",
        "int4_group_size",
    ],
    "tensor": ["layer", "kind", "codec", "group_size"],
    "piece": ["layer", "kind", "scales", "offset"],
    "trailer": ["messages", "encoded_bytes"],
}


@PROPERTY
@given(data=st.data(), codec=st.sampled_from([FP16, INT8, INT4]))
def test_any_damaged_field_is_a_codec_error_or_harmless_never_a_crash(data, codec) -> None:
    cache = make_layers((1, 2, 40, 24), [0, 2], seed=2)
    messages = encode_stream(CodecSpec(codec=codec, group_size=16, max_message_bytes=700), cache)
    index = data.draw(st.integers(0, len(messages) - 1), label="message")
    damaged = copy(messages[index])
    part = getattr(damaged, body(damaged))
    choices = (
        MUTABLE_FIELDS[body(damaged)]
        + {
            "header": ["layers"],
            "tensor": ["shape", "data", "scales"],
            "piece": ["data"],
            "trailer": [],
        }[body(damaged)]
    )
    field = data.draw(st.sampled_from(choices), label="field")
    if field in ("layers", "shape"):
        values = getattr(part, field)
        values[data.draw(st.integers(0, len(values) - 1))] += data.draw(st.integers(1, 5))
    elif field in ("data", "scales") and body(damaged) == "tensor":
        info = getattr(part, field)
        name = data.draw(st.sampled_from(["encoded_bytes", "raw_bytes", "lz4", "crc32"]))
        setattr(info, name, not info.lz4 if name == "lz4" else getattr(info, name) + 1)
    elif field == "data":
        part.data = part.data[: data.draw(st.integers(0, len(part.data) - 1))]
    elif field in ("scales",):
        part.scales = not part.scales
    else:
        setattr(part, field, getattr(part, field) + data.draw(st.integers(1, 5)))
    intact = decode_stream(messages, expected_layers=[0, 2])
    messages[index] = damaged
    try:
        decoded = decode_stream(messages, expected_layers=[0, 2])
    except (KVCodecError, WrongModel):
        return
    # A field the stream does not depend on (say num_layers grown) may change: never the cache.
    for got, want in zip(decoded, intact, strict=True):
        assert got.layer == want.layer
        assert torch.equal(got.key, want.key) and torch.equal(got.value, want.value)


def test_flipped_byte_in_scales_is_rejected_naming_the_layer() -> None:
    cache = make_layers((1, 2, 64, 64), [5])
    messages = encode_stream(CodecSpec(codec=INT8), cache)
    index = next(i for i, m in enumerate(messages) if body(m) == "piece" and m.piece.scales)
    damaged = copy(messages[index])
    damaged.piece.data = bytes([damaged.piece.data[0] ^ 0x40]) + damaged.piece.data[1:]
    messages[index] = damaged
    with pytest.raises(ChecksumMismatch, match=r"layer 5: \w+ scales payload CRC-32"):
        decode_stream(messages)


@PROPERTY
@given(cut=st.integers(1, 200))
def test_stream_cut_anywhere_before_its_trailer_is_truncated(cut) -> None:
    cache = make_layers((1, 2, 32, 16), [0, 1, 2])
    messages = encode_stream(CodecSpec(codec=INT8, max_message_bytes=512), cache)
    cut = min(cut, len(messages) - 1)
    decoder = feed_all(messages[:cut])
    with pytest.raises(TruncatedStream, match="ended without a trailer"):
        decoder.finish()


def test_stream_that_ends_before_the_header_is_truncated() -> None:
    with pytest.raises(TruncatedStream, match="before its header"):
        KVStreamDecoder().finish()


def test_trailer_before_the_last_layer_is_truncated_naming_the_missing_layers() -> None:
    cache = make_layers((1, 2, 16, 8), [0, 1, 2])
    messages = encode_stream(CodecSpec(), cache)
    first_layer_2 = next(
        i for i, m in enumerate(messages) if body(m) == "tensor" and m.tensor.layer == 2
    )
    with pytest.raises(TruncatedStream, match=r"layers not complete: \[2\]"):
        feed_all(messages[:first_layer_2] + messages[-1:])


def test_missing_layer_is_rejected_naming_the_layer_that_was_due() -> None:
    cache = make_layers((1, 2, 16, 8), [0, 1, 2])
    messages = [
        m
        for m in encode_stream(CodecSpec(codec=INT8), cache)
        if body(m) in ("header", "trailer") or getattr(m, body(m)).layer != 1
    ]
    with pytest.raises(LayerOrderError, match="layer 2 arrived where layer 1 was due") as caught:
        feed_all(messages)
    assert caught.value.layer == 1


def test_layers_out_of_header_order_are_rejected() -> None:
    header_order = encode_stream(CodecSpec(), make_layers((1, 1, 8, 8), [0, 1]))
    swapped = encode_stream(CodecSpec(), make_layers((1, 1, 8, 8), [1, 0]))
    with pytest.raises(LayerOrderError, match="layer 1 arrived where layer 0 was due"):
        feed_all(header_order[:1] + swapped[1:])


def test_value_before_key_is_rejected() -> None:
    messages = encode_stream(CodecSpec(), make_layers((1, 1, 8, 8), [4]))
    key_part = [m for m in messages[1:-1] if getattr(m, body(m)).kind == KEY]
    value_part = [m for m in messages[1:-1] if getattr(m, body(m)).kind == VALUE]
    with pytest.raises(LayerOrderError, match="layer 4: value tensor arrived where the key"):
        feed_all(messages[:1] + value_part + key_part)


def test_header_listing_other_layers_than_requested_is_rejected() -> None:
    messages = encode_stream(CodecSpec(), make_layers((1, 1, 8, 8), [0, 2]))
    with pytest.raises(LayerOrderError, match=r"lists layers \[0, 2\], requested \[0, 1\]"):
        feed_all(messages, expected_layers=[0, 1])


def test_tensor_shape_disagreeing_with_header_is_rejected() -> None:
    messages = encode_stream(CodecSpec(), make_layers((1, 2, 16, 8), [3]))
    damaged = copy(messages[1])
    damaged.tensor.shape[2] = 17
    with pytest.raises(ShapeMismatch, match=r"layer 3: key shape \[1, 2, 17, 8\]") as caught:
        feed_all([messages[0], damaged])
    assert caught.value.layer == 3


@pytest.mark.parametrize(
    ("field", "expected_value", "match"),
    [
        ("num_positions", 15, "num_positions is 16, expected 15"),
        ("num_kv_heads", 4, "num_kv_heads is 2, expected 4"),
        ("head_dim", 16, "head_dim is 8, expected 16"),
    ],
)
def test_header_disagreeing_with_the_receivers_expectation_is_rejected(
    field, expected_value, match
) -> None:
    messages = encode_stream(CodecSpec(), make_layers((1, 2, 16, 8), [0]))
    with pytest.raises(ShapeMismatch, match=match):
        feed_all(messages, expected=ExpectedShape(**{field: expected_value}))


def test_stream_from_another_model_is_wrong_model() -> None:
    messages = encode_stream(CodecSpec(), make_layers((1, 2, 16, 8), [0]))
    with pytest.raises(ModelMismatch, match="expected 'fuser-model'") as caught:
        feed_all(messages, expected=ExpectedShape(model_fingerprint="fuser-model"))
    assert isinstance(caught.value, WrongModel)


def test_group_size_disagreeing_with_header_is_rejected() -> None:
    messages = encode_stream(CodecSpec(codec=INT4, group_size=16), make_layers((1, 2, 64, 32), [1]))
    damaged = copy(messages[1])
    damaged.tensor.group_size = 32
    with pytest.raises(LayoutMismatch, match="layer 1: key group size 32 disagrees .* 16"):
        feed_all([messages[0], damaged])


def test_header_codec_other_than_requested_is_rejected() -> None:
    messages = encode_stream(CodecSpec(codec=FP16), make_layers((1, 2, 16, 8), [0]))
    with pytest.raises(LayoutMismatch, match="header codec fp16 is not the requested int8"):
        feed_all(messages, expected=ExpectedShape(codec=INT8))


def test_tensor_dtype_disagreeing_with_header_is_rejected() -> None:
    fp16 = encode_stream(CodecSpec(codec=FP16), make_layers((1, 2, 16, 8), [0]))
    bf16 = encode_stream(CodecSpec(codec=BF16), make_layers((1, 2, 16, 8), [0]))
    with pytest.raises(LayoutMismatch, match="codec bf16 disagrees with the header's fp16"):
        feed_all(fp16[:1] + bf16[1:])


def test_payload_size_the_shape_does_not_imply_is_rejected() -> None:
    messages = encode_stream(CodecSpec(codec=INT8), make_layers((1, 2, 16, 8), [0]))
    damaged = copy(messages[1])
    damaged.tensor.data.raw_bytes += 1
    with pytest.raises(PayloadSizeError, match="layer 0: key data payload announces"):
        feed_all([messages[0], damaged])


def test_missing_piece_is_an_offset_gap() -> None:
    messages = encode_stream(CodecSpec(max_message_bytes=256), make_layers((1, 2, 16, 8), [0]))
    pieces = [i for i, m in enumerate(messages) if body(m) == "piece"]
    del messages[pieces[1]]
    with pytest.raises(PayloadSizeError, match="expected offset"):
        feed_all(messages)


def test_message_over_the_limit_is_rejected() -> None:
    messages = encode_stream(
        CodecSpec(max_message_bytes=4 << 20), make_layers((1, 8, 512, 128), [0])
    )
    with pytest.raises(MessageTooLarge, match=r"exceeds the limit of 1048576"):
        feed_all(messages)


@pytest.mark.parametrize("codec", [c2c_pb2.CODEC_UNSPECIFIED, 7])
def test_unknown_codec_in_header_is_rejected(codec) -> None:
    messages = encode_stream(CodecSpec(), make_layers((1, 1, 8, 8), [0]))
    damaged = copy(messages[0])
    damaged.header.codec = codec
    with pytest.raises(UnknownCodec, match="is not a wire layout"):
        feed_all([damaged])


def test_impossible_header_is_rejected() -> None:
    messages = encode_stream(CodecSpec(), make_layers((1, 1, 8, 8), [0, 1]))
    repeated = copy(messages[0])
    repeated.header.layers[1] = 0
    with pytest.raises(InvalidHeader, match="repeat a layer"):
        feed_all([repeated])
    huge = copy(messages[0])
    huge.header.num_positions = 1 << 30
    with pytest.raises(InvalidHeader, match="over 2147483648 elements"):
        feed_all([huge])


def test_stream_must_start_with_its_header_and_have_only_one() -> None:
    messages = encode_stream(CodecSpec(), make_layers((1, 1, 8, 8), [0]))
    with pytest.raises(StreamOrderError, match="starts with a tensor message"):
        feed_all(messages[1:])
    with pytest.raises(StreamOrderError, match="second header"):
        feed_all(messages[:1] + messages[:1])


def test_nothing_may_follow_the_trailer() -> None:
    messages = encode_stream(CodecSpec(), make_layers((1, 1, 8, 8), [0]))
    with pytest.raises(StreamOrderError, match="after the trailer"):
        feed_all(messages + messages[-1:])


def test_trailer_counts_disagreeing_with_the_stream_are_rejected() -> None:
    messages = encode_stream(CodecSpec(), make_layers((1, 1, 8, 8), [0]))
    damaged = copy(messages[-1])
    damaged.trailer.messages += 1
    with pytest.raises(TrailerMismatch, match="received"):
        feed_all(messages[:-1] + [damaged])


def test_stream_errors_are_data_loss_for_grpc() -> None:
    assert issubclass(ChecksumMismatch, KVCodecError)
    assert KVCodecError.status == grpc.StatusCode.DATA_LOSS
    assert InvalidCodecSpec.status == grpc.StatusCode.INVALID_ARGUMENT


# --- the encoder's own checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"codec": 9}, "codec 9 is not a wire layout"),
        ({"codec": INT4, "group_size": 1}, "group size 1 outside"),
        ({"max_message_bytes": 100}, "max message bytes 100 outside"),
    ],
)
def test_invalid_codec_spec_is_a_bad_request(options, match) -> None:
    with pytest.raises(InvalidCodecSpec, match=match) as caught:
        CodecSpec(**options)
    assert isinstance(caught.value, BadRequest)


def test_limit_too_small_for_the_stream_header_is_a_bad_request() -> None:
    encoder = KVStreamEncoder(
        CodecSpec(max_message_bytes=256),
        model_fingerprint="f" * 300,
        num_layers=4,
        layers=[0],
        num_kv_heads=2,
        head_dim=8,
        num_positions=16,
        source_dtype="float16",
    )
    with pytest.raises(InvalidCodecSpec, match="cannot hold the stream header"):
        encoder.header()


def test_request_zeros_mean_defaults() -> None:
    spec = CodecSpec.from_request(0, 0, 0, default_codec=INT8)
    assert spec == CodecSpec(codec=INT8, group_size=32, max_message_bytes=1 << 20)
    assert CodecSpec.from_request(INT4, 64, 4096) == CodecSpec(INT4, 64, 4096)


def test_encoder_refuses_layers_out_of_header_order_and_wrong_shapes() -> None:
    encoder = KVStreamEncoder(
        CodecSpec(),
        model_fingerprint=FINGERPRINT,
        num_layers=4,
        layers=[1, 2],
        num_kv_heads=2,
        head_dim=8,
        num_positions=16,
        source_dtype="float16",
    )
    tensor = torch.zeros(1, 2, 16, 8)
    with pytest.raises(ValueError, match="layer 2 encoded out of order: the header says 1"):
        list(encoder.encode_layer(2, tensor, tensor))
    with pytest.raises(ValueError, match=r"the header says \(1, 2, 16, 8\)"):
        list(encoder.encode_layer(1, tensor, torch.zeros(1, 2, 15, 8)))
