"""C2C over real gRPC on 127.0.0.1 gives what the same fuser gives in-process.

The sharers run in float16 so that the fp16 wire layout is bit-exact and the networked tokens can
be compared for equality with the in-process reference (``fuser.fused_prefill``).
"""

from __future__ import annotations

import gc
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, format_trace_id

from c2c.generation import eos_token_ids
from c2c.kv_codec import CodecSpec, quantize_tensor
from c2c.model_loading import LoadedModel, load_causal_lm
from c2c.telemetry import setup_telemetry
from fuser.alignment import tokenize_with_spans
from fuser.checkpoint import load_checkpoint, save_checkpoint
from fuser.fused_prefill import fused_prompt_cache, sharer_aligned_kv
from fuser.fuser import C2CFuser
from protos import c2c_pb2
from tests.service_harness import (
    ProxySharer,
    random_fuser,
    receiver_stub,
    start_proxy,
    start_receiver,
    start_sharer,
)
from tests.tiny_models import TinyPair

PROMPTS = [
    "The red cat sleeps. Say the animal and its color:",
    "The gold owl has number 417. Which animal is gold?",
    "Prices: $12.50, 3,141 items -- which is cheaper?",
]
NEW_TOKENS = 8


@dataclass
class Deployment:
    """A sharer and a receiver serving one pair, and the same pair loaded in-process."""

    receiver: LoadedModel
    sharer: LoadedModel
    fuser: C2CFuser
    sharer_server: object
    receiver_server: object

    def stub(self):
        return receiver_stub(self.receiver_server.port)

    def stop(self) -> None:
        self.receiver_server.stop(0)
        self.sharer_server.stop(0)


def deploy(pair: TinyPair, sharer_dir: Path, fuser: C2CFuser, out: Path) -> Deployment:
    fuser_dir = save_checkpoint(fuser, out)
    sharer_server = start_sharer(sharer_dir, dtype="float16")
    receiver_server = start_receiver(pair.receiver, fuser_dir, sharer_server.port)
    return Deployment(
        receiver=load_causal_lm(pair.receiver),
        sharer=load_causal_lm(sharer_dir, "float16"),
        fuser=load_checkpoint(fuser_dir),
        sharer_server=sharer_server,
        receiver_server=receiver_server,
    )


@pytest.fixture(scope="module", params=["llama_sharer", "qwen2_sharer"])
def deployment(request, tiny_pair_dirs: TinyPair, tmp_path_factory) -> Deployment:
    sharer_dir = getattr(tiny_pair_dirs, request.param)
    fuser = random_fuser(tiny_pair_dirs.receiver, sharer_dir, seed=7)
    deployed = deploy(
        tiny_pair_dirs, sharer_dir, fuser, tmp_path_factory.mktemp(f"fuser_{request.param}")
    )
    yield deployed
    deployed.stop()


@torch.no_grad()
def in_process_tokens(deployed: Deployment, prompt: str, fuse: bool = True) -> list[int]:
    """Greedy tokens of the receiver on the in-process fused cache (or its own cache)."""
    receiver = deployed.receiver
    ids, spans = tokenize_with_spans(receiver.tokenizer, prompt)
    if fuse:
        cache = fused_prompt_cache(receiver, deployed.sharer, deployed.fuser, ids, prompt, spans)
    else:
        cache = receiver.model(input_ids=torch.tensor([ids[:-1]]), use_cache=True).past_key_values
    eos = eos_token_ids(receiver.model, receiver.tokenizer)
    tokens, next_ids = [], ids[-1:]
    for _ in range(NEW_TOKENS):
        logits = receiver.model(input_ids=torch.tensor([next_ids]), cache=cache).logits
        token = int(logits[0, -1].argmax())
        if token in eos:
            break
        tokens.append(token)
        next_ids = [token]
    return tokens


def generate(stub, prompt: str, mode=c2c_pb2.MODE_C2C, codec=c2c_pb2.CODEC_FP16):
    return stub.Generate(
        c2c_pb2.GenerateRequest(prompt=prompt, mode=mode, codec=codec, max_new_tokens=NEW_TOKENS),
        timeout=60,
    )


def test_fp16_networked_c2c_gives_the_in_process_tokens(deployment: Deployment) -> None:
    stub = deployment.stub()
    differs_from_receiver_only = False
    for prompt in PROMPTS:
        reply = generate(stub, prompt)
        assert reply.mode_used == c2c_pb2.MODE_C2C and not reply.fallback_reason
        assert list(reply.token_ids) == in_process_tokens(deployment, prompt)
        own = generate(stub, prompt, mode=c2c_pb2.MODE_RECEIVER_ONLY)
        differs_from_receiver_only |= list(own.token_ids) != list(reply.token_ids)
    assert differs_from_receiver_only, "fusion changed no answer: the test would prove nothing"


def test_int8_networked_c2c_gives_the_in_process_tokens(deployment: Deployment) -> None:
    stub = deployment.stub()
    for prompt in PROMPTS:
        reply = generate(stub, prompt, codec=c2c_pb2.CODEC_INT8)
        assert reply.codec_used == c2c_pb2.CODEC_INT8
        assert list(reply.token_ids) == in_process_tokens(deployment, prompt)


def test_reply_reports_the_pair_and_measured_costs(deployment: Deployment) -> None:
    reply = generate(deployment.stub(), PROMPTS[0])
    fuser = deployment.fuser
    assert list(reply.fused_layers) == fuser.fused_receiver_layers()
    assert list(reply.sharer_layers) == fuser.required_sharer_layers()
    ids, _ = tokenize_with_spans(deployment.receiver.tokenizer, PROMPTS[0])
    assert reply.prompt_tokens == len(ids)
    timings = reply.timings
    assert timings.total >= timings.decode > 0
    assert timings.transfer > 0 and timings.sharer_prefill > 0 and timings.fusion > 0
    assert timings.total >= timings.time_to_first_token > 0
    assert len(reply.trace_id) == 32 and int(reply.trace_id, 16)


def test_ten_concurrent_clients_over_mixed_modes_get_their_own_answers(
    deployment: Deployment,
) -> None:
    stub = deployment.stub()
    modes = [c2c_pb2.MODE_C2C, c2c_pb2.MODE_RECEIVER_ONLY, c2c_pb2.MODE_TEXT]
    jobs = [(PROMPTS[i % len(PROMPTS)], modes[i % len(modes)]) for i in range(10)]
    expected = {job: list(generate(stub, *job).token_ids) for job in set(jobs)}
    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(lambda job: generate(stub, *job), jobs))
    for job, reply in zip(jobs, replies, strict=True):
        assert reply.mode_used == job[1] and not reply.fallback_reason
        assert list(reply.token_ids) == expected[job]
    for prompt, mode in set(jobs):
        if mode == c2c_pb2.MODE_C2C:
            assert expected[(prompt, mode)] == in_process_tokens(deployment, prompt)
    assert deployment.receiver_server.pipeline.active_requests == 0
    assert deployment.sharer_server.prefill.active_requests == 0


def test_with_every_gate_off_c2c_is_exactly_receiver_only(
    tiny_pair_dirs: TinyPair, tmp_path: Path
) -> None:
    sharer_dir = tiny_pair_dirs.llama_sharer
    closed = random_fuser(tiny_pair_dirs.receiver, sharer_dir, seed=7, gate_logit=-1.0)
    deployed = deploy(tiny_pair_dirs, sharer_dir, closed, tmp_path / "closed")
    try:
        stub = deployed.stub()
        for prompt in PROMPTS:
            c2c = generate(stub, prompt)
            own = generate(stub, prompt, mode=c2c_pb2.MODE_RECEIVER_ONLY)
            assert list(c2c.token_ids) == list(own.token_ids)
            assert list(c2c.token_ids) == in_process_tokens(deployed, prompt, fuse=False)
            assert c2c.bytes_on_wire == 0 and not c2c.sharer_layers and not c2c.fused_layers
    finally:
        deployed.stop()


def test_only_the_layers_the_fuser_needs_cross_the_wire(
    tiny_pair_dirs: TinyPair, tmp_path: Path
) -> None:
    sharer_dir = tiny_pair_dirs.qwen2_sharer
    fuser = random_fuser(tiny_pair_dirs.receiver, sharer_dir, seed=3)
    mapped = sorted(fuser.layer_map())
    with torch.no_grad():  # close both gates of every other mapped receiver layer
        for receiver_layer in mapped[::2]:
            fuser.projectors[str(receiver_layer)].gate_logits.fill_(-1.0)
    deployed = deploy(tiny_pair_dirs, sharer_dir, fuser, tmp_path / "half")
    try:
        needed = deployed.fuser.required_sharer_layers()
        assert 0 < len(needed) < deployed.sharer.card.num_layers
        prompt = PROMPTS[1]
        reply = generate(deployed.stub(), prompt)
        assert list(reply.sharer_layers) == needed
        assert list(reply.fused_layers) == mapped[1::2]
        receiver = deployed.receiver
        ids, spans = tokenize_with_spans(receiver.tokenizer, prompt)
        kv = sharer_aligned_kv(
            deployed.sharer, deployed.fuser.config.alignment, prompt, spans[:-1], needed
        )
        spec = CodecSpec(codec=c2c_pb2.CODEC_FP16)
        expected_bytes = sum(
            quantize_tensor(layer, kind, tensor, spec).encoded_bytes
            for layer in needed
            for kind, tensor in zip(
                (c2c_pb2.TENSOR_KIND_KEY, c2c_pb2.TENSOR_KIND_VALUE), kv[layer], strict=True
            )
        )
        assert reply.bytes_on_wire == expected_bytes
        assert list(reply.token_ids) == in_process_tokens(deployed, prompt)
    finally:
        deployed.stop()


@pytest.fixture(scope="module")
def recorded_spans() -> InMemorySpanExporter:
    """Every span finished in this process from now on (the services share its provider)."""
    exporter = InMemorySpanExporter()
    setup_telemetry("c2c-tests").tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def spans_of(
    exporter: InMemorySpanExporter, trace_id: str, expected: tuple[str, ...] = ()
) -> dict[str, list]:
    """The trace's finished spans by name, once ``expected`` are all there (or 10 s have passed):
    leaf spans are built after their RPC completes, a moment after the reply reaches us."""
    deadline = time.monotonic() + 10
    while True:
        found: dict[str, list] = {}
        for span in exporter.get_finished_spans():
            if format_trace_id(span.context.trace_id) == trace_id:
                found.setdefault(span.name, []).append(span)
        if all(name in found for name in expected) or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def is_descendant(span, ancestor, by_id: dict) -> bool:
    while span.parent is not None:
        if span.parent.span_id == ancestor.context.span_id:
            return True
        span = by_id.get(span.parent.span_id)
        if span is None:
            return False
    return False


def test_one_request_is_one_trace_with_every_span_of_both_services(
    deployment: Deployment, recorded_spans: InMemorySpanExporter
) -> None:
    reply = generate(deployment.stub(), PROMPTS[0])
    required = (
        "receiver.generate",
        "receiver.tokenize",
        "receiver.prefill",
        "network.transfer",
        "kv.decode",
        "fusion",
        "decoding",
        "sharer.prefill",
        "sharer.forward",
        "kv.encode",
    )
    spans = spans_of(recorded_spans, reply.trace_id, required)
    assert all(name in spans for name in required), sorted(spans)
    by_id = {s.context.span_id: s for group in spans.values() for s in group}
    (transfer,) = spans["network.transfer"]
    (sharer_prefill,) = spans["sharer.prefill"]
    assert is_descendant(sharer_prefill, transfer, by_id)
    (root,) = spans["receiver.generate"]
    assert root.attributes["c2c.mode"] == "c2c" and root.attributes["c2c.mode_used"] == "c2c"
    assert root.attributes["c2c.prompt_tokens"] == reply.prompt_tokens
    assert root.attributes["c2c.new_tokens"] == len(reply.token_ids)
    assert transfer.attributes["c2c.bytes_on_wire"] == reply.bytes_on_wire
    assert transfer.attributes["c2c.layers"] == len(reply.sharer_layers)
    (encode,) = spans["kv.encode"]
    assert encode.attributes["c2c.encoded_bytes"] == reply.bytes_on_wire
    (fusion,) = spans["fusion"]
    fused = [event.attributes["c2c.layer"] for event in fusion.events if event.name == "layer"]
    assert sorted(fused) == list(reply.fused_layers)
    (decoding,) = spans["decoding"]
    assert decoding.attributes["c2c.new_tokens"] == len(reply.token_ids)
    assert decoding.attributes["c2c.tokens_per_s"] > 0


def test_fallback_and_failure_are_visible_on_the_request_span(
    tiny_pair_dirs: TinyPair, tmp_path: Path, recorded_spans: InMemorySpanExporter
) -> None:
    sharer_dir = tiny_pair_dirs.llama_sharer
    deployed = deploy(
        tiny_pair_dirs, sharer_dir, random_fuser(tiny_pair_dirs.receiver, sharer_dir), tmp_path
    )
    try:
        deployed.sharer_server.stop(0)
        stub = deployed.stub()
        reply = stub.Generate(
            c2c_pb2.GenerateRequest(prompt=PROMPTS[0], max_new_tokens=2, allow_fallback=True),
            timeout=60,
        )
        (root,) = spans_of(recorded_spans, reply.trace_id)["receiver.generate"]
        (event,) = [event for event in root.events if event.name == "fallback"]
        assert event.attributes["c2c.fallback_reason"] == reply.fallback_reason
        assert root.attributes["c2c.mode_used"] == "receiver_only"
        with pytest.raises(grpc.RpcError):
            stub.Generate(c2c_pb2.GenerateRequest(prompt=PROMPTS[0], max_new_tokens=2), timeout=60)
        failed = [
            span
            for span in recorded_spans.get_finished_spans()
            if span.name == "receiver.generate" and span.status.status_code == StatusCode.ERROR
        ]
        assert failed and any(event.name == "exception" for event in failed[-1].events)
    finally:
        deployed.receiver_server.stop(0)


def test_a_corrupt_stream_ends_its_client_span_within_the_transfer(
    tiny_pair_dirs: TinyPair, tmp_path: Path, recorded_spans: InMemorySpanExporter
) -> None:
    """The receiver closes a Prefill call it abandons; left to the garbage collector, the call's
    CLIENT span ended late, on whatever thread collected it, which logged a context error."""
    sharer_dir = tiny_pair_dirs.llama_sharer
    fuser_dir = save_checkpoint(random_fuser(tiny_pair_dirs.receiver, sharer_dir), tmp_path)
    sharer = start_sharer(sharer_dir)
    proxy_server, proxy_port = start_proxy(ProxySharer(sharer.port, flip_byte=True))
    receiver = start_receiver(tiny_pair_dirs.receiver, fuser_dir, proxy_port)
    prefill_call = "/c2c.v1.Sharer/Prefill"
    gc.disable()  # so that only the receiver itself can end the abandoned call
    try:
        reply = receiver_stub(receiver.port).Generate(
            c2c_pb2.GenerateRequest(prompt=PROMPTS[0], max_new_tokens=2, allow_fallback=True),
            timeout=60,
        )
        spans = spans_of(recorded_spans, reply.trace_id, (prefill_call, "network.transfer"))
    finally:
        gc.enable()
        receiver.stop(0)
        proxy_server.stop(0)
        sharer.stop(0)
    assert "CRC" in reply.fallback_reason
    assert prefill_call in spans, sorted(spans)
    (call,) = spans[prefill_call]
    (transfer,) = spans["network.transfer"]
    assert call.parent.span_id == transfer.context.span_id
    assert call.end_time <= transfer.end_time
