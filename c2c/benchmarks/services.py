"""`c2c bench services`: the receiver's modes and codecs side by side, over real gRPC, in one run.

Every variant (c2c with each codec, receiver_only, text) answers the same prompts, interleaved
request by request so that load drift hits all of them alike. Latencies and bytes come from the
replies, i.e. what the receiver measured; int8/int4 token agreement is against c2c fp16.
``overlap_saved`` is receiver prefill + transfer + fusion + decode - total: what running the
receiver's prefill alongside the sharer's stream saved (about 0 without a sharer).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import grpc
import typer

from c2c.local_pair import FuserOption, ReceiverModelOption, SharerModelOption
from c2c.service_config import model_or_bundled
from protos import c2c_pb2, c2c_pb2_grpc

PROMPTS = (
    "Which planet is the largest in the solar system?",
    "The red cat sleeps. Say the animal and its color:",
    "Explain in one sentence why the sky is blue.",
    "List three prime numbers greater than ten.",
    "The gold owl has number 417. Which animal is gold, and what is its number?",
    "Translate 'good morning' into French and say which language it is.",
    "What is 12 times 12? Answer with the number only.",
    "Name the capital of Japan and one famous landmark there.",
)
VARIANTS = (
    ("c2c_fp16", c2c_pb2.MODE_C2C, c2c_pb2.CODEC_FP16),
    ("c2c_int8", c2c_pb2.MODE_C2C, c2c_pb2.CODEC_INT8),
    ("c2c_int4", c2c_pb2.MODE_C2C, c2c_pb2.CODEC_INT4),
    ("receiver_only", c2c_pb2.MODE_RECEIVER_ONLY, c2c_pb2.CODEC_UNSPECIFIED),
    ("text", c2c_pb2.MODE_TEXT, c2c_pb2.CODEC_UNSPECIFIED),
)
TIMING_FIELDS = (
    "total",
    "time_to_first_token",
    "receiver_prefill",
    "sharer_prefill",
    "transfer",
    "transfer_blocked",
    "fusion",
    "decode",
)


@dataclass
class VariantSummary:
    """Medians (and p90 of the total) over one variant's requests, in ms and bytes."""

    variant: str
    requests: int
    fallbacks: int
    median_ms: dict[str, float]
    p90_total_ms: float
    median_bytes_on_wire: float
    median_new_tokens: float
    same_tokens_as_c2c_fp16: float | None


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def summarize(name: str, replies: list[c2c_pb2.GenerateReply], reference=None) -> VariantSummary:
    timings = {f: [getattr(r.timings, f) for r in replies] for f in TIMING_FIELDS}
    # What the same steps would cost one after another, minus what the request took: the time
    # the receiver's own prefill and the sharer's stream spent running at the same time.
    timings["overlap_saved"] = [
        r.timings.receiver_prefill
        + r.timings.transfer
        + r.timings.fusion
        + r.timings.decode
        - r.timings.total
        for r in replies
    ]
    agreement = None
    if reference is not None:
        pairs = zip(replies, reference, strict=True)
        same = [list(a.token_ids) == list(b.token_ids) for a, b in pairs]
        agreement = sum(same) / len(same)
    return VariantSummary(
        variant=name,
        requests=len(replies),
        fallbacks=sum(bool(r.fallback_reason) for r in replies),
        median_ms={f: round(statistics.median(v), 3) for f, v in timings.items()},
        p90_total_ms=round(_p90(timings["total"]), 3),
        median_bytes_on_wire=statistics.median(r.bytes_on_wire for r in replies),
        median_new_tokens=statistics.median(len(r.token_ids) for r in replies),
        same_tokens_as_c2c_fp16=agreement,
    )


def run_variants(
    stub: c2c_pb2_grpc.ReceiverStub, rounds: int, new_tokens: int
) -> dict[str, list[c2c_pb2.GenerateReply]]:
    """Each round sends every prompt once per variant, variants interleaved."""
    replies: dict[str, list[c2c_pb2.GenerateReply]] = {name: [] for name, _, _ in VARIANTS}
    for _ in range(rounds):
        for prompt in PROMPTS:
            for name, mode, codec in VARIANTS:
                request = c2c_pb2.GenerateRequest(
                    prompt=prompt, mode=mode, codec=codec, max_new_tokens=new_tokens
                )
                replies[name].append(stub.Generate(request, timeout=300))
    return replies


def services_command(
    receiver_model: ReceiverModelOption = None,
    sharer_model: SharerModelOption = None,
    fuser: FuserOption = None,
    receiver: Annotated[
        str | None,
        typer.Option(help="Benchmark a running receiver at HOST:PORT instead of starting both."),
    ] = None,
    rounds: Annotated[int, typer.Option(help="Times every prompt is sent per variant.")] = 2,
    new_tokens: Annotated[int, typer.Option(help="max_new_tokens of every request.")] = 16,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
) -> None:
    """c2c (fp16, int8, int4), receiver_only and text on the same prompts; prints JSON."""
    servers = []
    if receiver is None:
        from receiver_service.server import serve as serve_receiver
        from sharer_service.server import serve as serve_sharer

        sharer_server = serve_sharer(
            model_or_bundled(sharer_model, "sharer", "--sharer-model"),
            host="127.0.0.1",
            port=0,
            wait=False,
        )
        receiver_server = serve_receiver(
            model_or_bundled(receiver_model, "receiver", "--receiver-model"),
            model_or_bundled(fuser, "fuser", "--fuser"),
            f"127.0.0.1:{sharer_server.port}",
            host="127.0.0.1",
            port=0,
            wait=False,
        )
        servers = [receiver_server, sharer_server]
        receiver = f"127.0.0.1:{receiver_server.port}"
    try:
        with grpc.insecure_channel(receiver) as channel:
            stub = c2c_pb2_grpc.ReceiverStub(channel)
            card = stub.Describe(c2c_pb2.DescribeRequest(), timeout=30)
            run_variants(stub, 1, 2)  # warm-up: first calls pay for lazy initialisation
            replies = run_variants(stub, rounds, new_tokens)
    except grpc.RpcError as error:
        typer.echo(f"error: {error.code().name}: {error.details()}", err=True)
        raise typer.Exit(1) from None
    finally:
        for server in servers:
            server.stop(0)
    reference = replies["c2c_fp16"]
    summaries = [
        summarize(name, replies[name], reference if name.startswith("c2c_int") else None)
        for name, _, _ in VARIANTS
    ]
    report = {
        "benchmark": "services",
        "compared": "c2c with fp16/int8/int4 KV codecs vs receiver_only vs text (T2T), "
        "same prompts, interleaved, over gRPC on one host",
        "receiver": card.receiver.model_name,
        "sharer": card.sharer.model_name,
        "c2c_ready": card.c2c_ready,
        "prompts": len(PROMPTS),
        "rounds": rounds,
        "new_tokens": new_tokens,
        "variants": [asdict(summary) for summary in summaries],
    }
    text = json.dumps(report, indent=2)
    typer.echo(text)
    if out is not None:
        out.write_text(text + "\n")
