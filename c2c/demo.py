"""`c2c demo`: the bundled pair answering in every mode, side by side, in about a minute.

Starts ``c2c-sharer`` and ``c2c-receiver`` as separate processes on free local ports, asks a few
evaluation questions in every mode next to the correct answer, scores a small sample per mode,
breaks one C2C request down (timings, bytes on the wire, its trace as a waterfall and a PNG), and
stops both services with SIGTERM.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Annotated

import grpc
import typer

from c2c.evaluation import (
    MODES,
    EvalSettings,
    ModeClients,
    QuestionFileError,
    ask,
    ask_all,
    format_table,
    load_questions,
    report,
)
from c2c.local_pair import (
    FuserOption,
    PairStartError,
    ReceiverModelOption,
    SharerModelOption,
    bundled_questions,
    local_pair,
    pair_paths,
)
from c2c.trace_view import TraceFileError, draw_gantt, load_spans, render_waterfall, select_trace
from c2c.zoo.corpora import LETTERS, MultipleChoiceQuestion, render_prompt
from protos import c2c_pb2

_TIMING_FIELDS = (
    ("receiver_prefill", "receiver's own prefill (positions 0..N-2)"),
    ("sharer_prefill", "sharer's forward pass"),
    ("transfer", "KV stream, first request byte to trailer"),
    ("transfer_blocked", "receiver idle, waiting on the network"),
    ("fusion", "projector + gated fusion, all layers"),
    ("decode", "last prompt token + decode loop"),
    ("time_to_first_token", "time to first token"),
    ("total", "request receipt to reply"),
)


def _show_question(
    clients: ModeClients, number: int, question: MultipleChoiceQuestion, settings: EvalSettings
) -> None:
    typer.echo(f"\nQ{number}. {question.question}")
    typer.echo("    " + "   ".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(question.choices)))
    typer.echo(f"    correct: {question.answer_letter} ({question.choices[question.answer]})")
    for mode in settings.modes:
        answer = ask(clients, number, question, mode, "fp16", settings)
        verdict = "right" if answer.correct else "wrong"
        said = repr(answer.text.strip()[:24])
        typer.echo(f"    {mode:<14} {said:<28} {verdict:<6} {answer.latency_ms:7.0f} ms")


def _one_c2c_request(
    clients: ModeClients, question: MultipleChoiceQuestion
) -> c2c_pb2.GenerateReply:
    reply = clients.receiver.Generate(
        c2c_pb2.GenerateRequest(
            prompt=render_prompt(question),
            mode=c2c_pb2.MODE_C2C,
            codec=c2c_pb2.CODEC_INT8,
            max_new_tokens=6,
            stop=["\n"],
        ),
        timeout=60,
    )
    typer.echo(f"\nOne C2C request (int8 KV codec), trace {reply.trace_id}:")
    typer.echo(f"    answered {reply.text.strip()!r}, correct {question.answer_letter}")
    for name, meaning in _TIMING_FIELDS:
        typer.echo(f"    {name:<20} {getattr(reply.timings, name):8.1f} ms   {meaning}")
    typer.echo(
        f"    bytes on the wire    {reply.bytes_on_wire:8d}      KV payload from the sharer "
        f"({reply.prompt_tokens} prompt tokens; receiver layers fused {list(reply.fused_layers)}, "
        f"sharer layers sent {list(reply.sharer_layers)})"
    )
    return reply


def _show_trace(trace_files: tuple[Path, ...], trace_id: str, png: Path) -> None:
    spans = [span for path in trace_files if path.is_file() for span in load_spans(path)]
    trace = select_trace(spans, trace_id)
    typer.echo("\n" + render_waterfall(trace))
    draw_gantt(trace, png)


def demo_command(
    questions: Annotated[int, typer.Option(min=1, help="Questions shown side by side.")] = 4,
    sample: Annotated[int, typer.Option(min=1, help="Questions in the accuracy table.")] = 24,
    out: Annotated[
        Path, typer.Option(help="Directory for the trace files and the waterfall PNG.")
    ] = Path("c2c-demo"),
    seed: Annotated[int, typer.Option(help="Which questions are drawn.")] = 0,
    receiver_model: ReceiverModelOption = None,
    sharer_model: SharerModelOption = None,
    fuser: FuserOption = None,
    questions_file: Annotated[
        Path | None,
        typer.Option("--questions-file", help="MMLU-style JSONL (default: the bundled set)."),
    ] = None,
) -> None:
    """Start the bundled pair, answer in every mode side by side, show one C2C request's trace."""
    started = time.perf_counter()
    try:
        paths = pair_paths(receiver_model, sharer_model, fuser)
        pool = load_questions(questions_file or bundled_questions())
    except (FileNotFoundError, QuestionFileError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    drawn = random.Random(seed).sample(pool, min(len(pool), questions + sample))
    shown, scored = drawn[:questions], drawn[questions:]
    settings = EvalSettings(modes=MODES, codecs=("fp16",))
    out.mkdir(parents=True, exist_ok=True)
    try:
        typer.echo("starting c2c-sharer and c2c-receiver on 127.0.0.1 ...")
        with local_pair(paths, trace_dir=out.resolve()) as addresses:
            typer.echo(
                f"sharer {addresses.sharer}, receiver {addresses.receiver} "
                f"(up in {time.perf_counter() - started:.0f} s)"
            )
            clients = ModeClients(addresses.receiver, addresses.sharer)
            try:
                # First requests pay for lazy initialisation; keep that out of the timings shown.
                for mode in settings.modes:
                    ask(clients, 0, scored[0] if scored else shown[0], mode, "fp16", settings)
                for number, question in enumerate(shown, start=1):
                    _show_question(clients, number, question, settings)
                typer.echo(f"\nAccuracy on {len(scored)} other evaluation questions:")
                answers = ask_all(clients, scored, settings, progress=False)
                typer.echo(format_table(report(answers, scored, settings)))
                reply = _one_c2c_request(clients, shown[0])
            finally:
                clients.close()
            trace_files = addresses.trace_files
        typer.echo("both services stopped (SIGTERM, drained, traces flushed)")
        png = out / "c2c_trace.png"
        _show_trace(trace_files, reply.trace_id, png)
    except (PairStartError, FileNotFoundError, TraceFileError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    except grpc.RpcError as error:
        typer.echo(f"error: {error.code().name}: {error.details()}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"\ntrace files: {', '.join(str(p) for p in trace_files)}\nwaterfall PNG: {png}\n"
        f"demo finished in {time.perf_counter() - started:.0f} s"
    )
