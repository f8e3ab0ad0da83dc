"""The sharer service over real gRPC: its card, the Prefill stream, GenerateText, bad input,
cancellation."""

from __future__ import annotations

import time

import grpc
import pytest
import torch

from c2c.kv_codec import ExpectedShape, KVStreamDecoder
from c2c.model_loading import load_causal_lm, read_dims
from fuser.alignment import tokenize_with_spans
from fuser.fused_prefill import sharer_aligned_kv
from protos import c2c_pb2
from tests.service_harness import sharer_stub, start_sharer
from tests.tiny_models import TinyPair

TEXT = "The gold owl has number 417. Which animal is gold?"


@pytest.fixture(scope="module")
def sharer(tiny_pair_dirs: TinyPair):
    server = start_sharer(tiny_pair_dirs.qwen2_sharer, max_prompt_tokens=200, max_new_tokens=32)
    yield server
    server.stop(0)


@pytest.fixture(scope="module")
def receiver_spans(tiny_receiver) -> list[tuple[int, int]]:
    return tokenize_with_spans(tiny_receiver.tokenizer, TEXT)[1]


def prefill_request(spans, **fields) -> c2c_pb2.PrefillRequest:
    fields.setdefault("layers", [5, 1, 3])
    return c2c_pb2.PrefillRequest(
        text=TEXT,
        receiver_spans=[c2c_pb2.TokenSpan(start=s, end=e) for s, e in spans],
        **fields,
    )


def test_describe_returns_the_model_card(sharer, tiny_pair_dirs: TinyPair) -> None:
    card = sharer_stub(sharer.port).Describe(c2c_pb2.DescribeRequest(), timeout=10)
    dims = read_dims(tiny_pair_dirs.qwen2_sharer)
    assert card.model_fingerprint == dims.model_fingerprint
    assert (card.num_layers, card.num_kv_heads, card.head_dim) == (6, 1, 16)
    assert card.architecture == "Qwen2ForCausalLM" and card.max_prompt_tokens == 200


def test_prefill_streams_the_requested_layers_in_order_aligned_to_the_receiver(
    sharer, receiver_spans, tiny_pair_dirs: TinyPair
) -> None:
    request = prefill_request(receiver_spans, codec=c2c_pb2.CODEC_FP16, max_message_bytes=512)
    messages = list(sharer_stub(sharer.port).Prefill(request, timeout=30))
    assert messages[0].HasField("header") and messages[-1].HasField("trailer")
    dims = read_dims(tiny_pair_dirs.qwen2_sharer)
    decoder = KVStreamDecoder(
        [5, 1, 3],
        max_message_bytes=512,
        expected=ExpectedShape(dims.model_fingerprint, 1, 16, len(receiver_spans)),
    )
    layers = [layer for message in messages if (layer := decoder.feed(message)) is not None]
    decoder.finish()
    assert [layer.layer for layer in layers] == [5, 1, 3]
    assert all(message.ByteSize() <= 512 for message in messages)
    reference = sharer_aligned_kv(
        load_causal_lm(tiny_pair_dirs.qwen2_sharer), "offsets", TEXT, receiver_spans, [5, 1, 3]
    )
    for layer in layers:
        key, value = reference[layer.layer]
        assert torch.equal(layer.key, key.half()) and torch.equal(layer.value, value.half())
    trailer = decoder.trailer
    assert trailer.messages == len(messages) - 1
    assert trailer.prefill_ms > 0 and trailer.total_ms >= trailer.prefill_ms
    assert trailer.sharer_tokens > 0 and trailer.encoded_bytes == decoder.encoded_bytes


def test_shallow_layers_only_are_the_same_kv_without_running_the_deeper_layers(
    sharer, receiver_spans, tiny_pair_dirs: TinyPair
) -> None:
    request = prefill_request(receiver_spans, layers=[1, 0], codec=c2c_pb2.CODEC_FP16)
    decoder = KVStreamDecoder([1, 0])
    stream = sharer_stub(sharer.port).Prefill(request, timeout=30)
    layers = [layer for message in stream if (layer := decoder.feed(message)) is not None]
    decoder.finish()
    reference = sharer_aligned_kv(
        load_causal_lm(tiny_pair_dirs.qwen2_sharer), "offsets", TEXT, receiver_spans, [1, 0]
    )
    assert [layer.layer for layer in layers] == [1, 0]
    for layer in layers:
        key, value = reference[layer.layer]
        assert torch.equal(layer.key, key.half()) and torch.equal(layer.value, value.half())


def test_identity_alignment_prefills_the_given_token_ids(sharer) -> None:
    request = c2c_pb2.PrefillRequest(token_ids=[5, 9, 17, 33], layers=[0], codec=c2c_pb2.CODEC_INT8)
    messages = list(sharer_stub(sharer.port).Prefill(request, timeout=30))
    header, trailer = messages[0].header, messages[-1].trailer
    assert header.num_positions == 4 and list(header.layers) == [0]
    assert header.codec == c2c_pb2.CODEC_INT8 and trailer.sharer_tokens == 4


BAD_PREFILLS = {
    "no layers": (dict(layers=[]), "layers"),
    "layer out of range": (dict(layers=[1, 6]), "layers[1]"),
    "layer twice": (dict(layers=[2, 2]), "layers"),
    "unknown codec": (dict(codec=9), "codec"),
    "unknown alignment": (dict(alignment=7), "alignment"),
    "message limit too small": (dict(max_message_bytes=16), "max message bytes"),
}


@pytest.mark.parametrize("name", sorted(BAD_PREFILLS))
def test_bad_prefill_is_invalid_argument_naming_the_field(sharer, receiver_spans, name) -> None:
    fields, field_name = BAD_PREFILLS[name]
    request = prefill_request(receiver_spans, **fields)
    with pytest.raises(grpc.RpcError) as caught:
        list(sharer_stub(sharer.port).Prefill(request, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_name in caught.value.details()


def test_prefill_refuses_spans_outside_the_text_and_missing_inputs(sharer) -> None:
    stub = sharer_stub(sharer.port)
    cases = {
        "receiver_spans[0]": c2c_pb2.PrefillRequest(
            text="abc", receiver_spans=[c2c_pb2.TokenSpan(start=1, end=9)], layers=[0]
        ),
        "receiver_spans": c2c_pb2.PrefillRequest(text="abc", layers=[0]),
        "token_ids": c2c_pb2.PrefillRequest(alignment=c2c_pb2.ALIGNMENT_IDENTITY, layers=[0]),
    }
    for field_name, request in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Prefill(request, timeout=30))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(field_name + ":"), caught.value.details()


def test_cancelled_prefill_stops_and_frees_the_request(sharer, receiver_spans) -> None:
    request = prefill_request(receiver_spans, max_message_bytes=256)
    stream = sharer_stub(sharer.port).Prefill(request, timeout=30)
    assert next(stream).HasField("header")
    stream.cancel()
    deadline = time.monotonic() + 10
    while sharer.prefill.active_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sharer.prefill.active_requests == 0


def test_generate_text_answers_greedily_and_within_the_limits(sharer) -> None:
    stub = sharer_stub(sharer.port)
    request = c2c_pb2.GenerateTextRequest(prompt=TEXT, max_new_tokens=5)
    first, second = stub.GenerateText(request, timeout=30), stub.GenerateText(request, timeout=30)
    assert 0 < len(first.token_ids) <= 5 and first.prompt_tokens > 0
    assert list(first.token_ids) == list(second.token_ids) and first.text == second.text
    for fields, field_name in (
        (dict(prompt=""), "prompt"),
        (dict(prompt=TEXT, max_new_tokens=33), "max_new_tokens"),
        (dict(prompt=TEXT, top_p=3.0), "top_p"),
        (dict(prompt="owl " * 300), "prompt"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.GenerateText(c2c_pb2.GenerateTextRequest(**fields), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(field_name + ":"), caught.value.details()
