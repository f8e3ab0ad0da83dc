"""`c2c eval`: multiple-choice accuracy and latency of every mode, through the real services.

One run asks every question in every mode side by side (``receiver_only``, ``sharer_only``,
``text`` and ``c2c``, the last once per KV codec), so every number in the report comes from the
same questions, the same servers and the same load. Answers are scored from the generated text;
separately, where the models are local, by the likelihood of each choice (``--loglik``).
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import grpc
import typer
from tqdm import tqdm

from c2c.errors import C2CError
from c2c.jsonl_records import read_jsonl
from c2c.local_pair import (
    FuserOption,
    PairPaths,
    PairStartError,
    ReceiverModelOption,
    SharerModelOption,
    bundled_questions,
    local_pair,
    pair_paths,
)
from c2c.zoo.corpora import LETTERS, MultipleChoiceQuestion, render_prompt
from protos import c2c_pb2, c2c_pb2_grpc

MODES = ("receiver_only", "sharer_only", "text", "c2c")
CODECS = ("fp16", "int8", "int4")
_RECEIVER_MODES = {
    "receiver_only": c2c_pb2.MODE_RECEIVER_ONLY,
    "text": c2c_pb2.MODE_TEXT,
    "c2c": c2c_pb2.MODE_C2C,
}
_CODECS = {"fp16": c2c_pb2.CODEC_FP16, "int8": c2c_pb2.CODEC_INT8, "int4": c2c_pb2.CODEC_INT4}


class QuestionFileError(ValueError):
    """The questions file is missing or has a line that is not a usable question."""


@dataclass(frozen=True)
class EvalSettings:
    """What is asked and how: greedy decoding of a few tokens, stopping at the end of the line."""

    modes: tuple[str, ...] = MODES
    codecs: tuple[str, ...] = CODECS
    max_new_tokens: int = 6
    timeout_s: float = 60.0


@dataclass(frozen=True)
class Answer:
    """One question answered in one mode (and codec, for c2c)."""

    question: int
    mode: str
    codec: str
    text: str
    choice: int | None
    correct: bool
    latency_ms: float
    bytes_on_wire: int = 0
    mode_used: str = ""


@dataclass
class ModeScore:
    """Accuracy with its 95% Wilson interval and latency percentiles of one mode."""

    n: int
    correct: int
    unparsed: int
    latency_ms: list[float] = field(repr=False)

    def summary(self) -> dict:
        return {
            "accuracy": self.correct / self.n if self.n else 0.0,
            "ci95": list(wilson_interval(self.correct, self.n)),
            "latency_ms_p50": percentile(self.latency_ms, 50),
            "latency_ms_p90": percentile(self.latency_ms, 90),
            "n": self.n,
            "correct": self.correct,
            "unparsed": self.unparsed,
        }


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: honest near 0 and 1 and for small samples, unlike p +- 2se."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile by linear interpolation (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _question_from(record: object, where: str) -> MultipleChoiceQuestion:
    if not isinstance(record, dict):
        raise QuestionFileError(f"{where}: expected a JSON object")
    question, choices, answer = record.get("question"), record.get("choices"), record.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise QuestionFileError(f"{where}: 'question' must be a non-empty string")
    if (
        not isinstance(choices, list)
        or not 2 <= len(choices) <= len(LETTERS)
        or not all(isinstance(c, str) and c.strip() for c in choices)
    ):
        raise QuestionFileError(
            f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} non-empty strings"
        )
    if isinstance(answer, str) and len(answer) == 1 and answer.upper() in LETTERS:
        answer = LETTERS.index(answer.upper())
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise QuestionFileError(
            f"{where}: 'answer' must be a choice index (0..{len(choices) - 1}) or letter"
        )
    return MultipleChoiceQuestion(
        question=question,
        choices=tuple(choices),
        answer=answer,
        subject=str(record.get("subject", "")),
        attribute=str(record.get("attribute", "")),
    )


def load_questions(path: Path) -> list[MultipleChoiceQuestion]:
    """MMLU-style JSONL: {"question", "choices": [...], "answer": index or letter} per line."""
    questions = [
        _question_from(record, where)
        for where, record in read_jsonl(path, "questions", QuestionFileError)
    ]
    if not questions:
        raise QuestionFileError(f"questions file {path} has no questions")
    return questions


_LEADING_LETTER = re.compile(r"^\W*\(?([A-Z])\b")


def parse_choice(text: str, question: MultipleChoiceQuestion) -> int | None:
    """The choice a generated text names: a leading letter, else the earliest choice text in it."""
    match = _LEADING_LETTER.match(text.strip())
    if match and LETTERS.find(match.group(1)) in range(len(question.choices)):
        return LETTERS.index(match.group(1))
    lowered = text.lower()
    found = [(lowered.find(c.lower()), i) for i, c in enumerate(question.choices)]
    found = [(position, i) for position, i in found if position >= 0]
    return min(found)[1] if found else None


class ModeClients:
    """Stubs for the receiver (three modes) and, when known, the sharer (``sharer_only``)."""

    def __init__(self, receiver: str, sharer: str | None) -> None:
        self._channels = [grpc.insecure_channel(receiver)]
        self.receiver = c2c_pb2_grpc.ReceiverStub(self._channels[0])
        self.sharer = None
        if sharer:
            self._channels.append(grpc.insecure_channel(sharer))
            self.sharer = c2c_pb2_grpc.SharerStub(self._channels[-1])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def ask(
    clients: ModeClients,
    index: int,
    question: MultipleChoiceQuestion,
    mode: str,
    codec: str,
    settings: EvalSettings,
) -> Answer:
    """Send one question in one mode; time it at the client, as a user would."""
    prompt = render_prompt(question)
    start = time.perf_counter()
    if mode == "sharer_only":
        reply = clients.sharer.GenerateText(
            c2c_pb2.GenerateTextRequest(
                prompt=prompt, max_new_tokens=settings.max_new_tokens, stop=["\n"]
            ),
            timeout=settings.timeout_s,
        )
        text, wire, used = reply.text, 0, mode
    else:
        reply = clients.receiver.Generate(
            c2c_pb2.GenerateRequest(
                prompt=prompt,
                mode=_RECEIVER_MODES[mode],
                codec=_CODECS[codec] if mode == "c2c" else c2c_pb2.CODEC_UNSPECIFIED,
                max_new_tokens=settings.max_new_tokens,
                stop=["\n"],
            ),
            timeout=settings.timeout_s,
        )
        text, wire = reply.text, reply.bytes_on_wire
        used = c2c_pb2.Mode.Name(reply.mode_used).removeprefix("MODE_").lower()
    latency_ms = (time.perf_counter() - start) * 1e3
    choice = parse_choice(text, question)
    return Answer(
        question=index,
        mode=mode,
        codec=codec if mode == "c2c" else "",
        text=text,
        choice=choice,
        correct=choice == question.answer,
        latency_ms=latency_ms,
        bytes_on_wire=wire,
        mode_used=used,
    )


def _runs(settings: EvalSettings, has_sharer: bool) -> list[tuple[str, str]]:
    runs = []
    for mode in settings.modes:
        if mode == "sharer_only" and not has_sharer:
            continue
        for codec in settings.codecs if mode == "c2c" else ("",):
            runs.append((mode, codec))
    return runs


def score(answers: Sequence[Answer]) -> ModeScore:
    return ModeScore(
        n=len(answers),
        correct=sum(a.correct for a in answers),
        unparsed=sum(a.choice is None for a in answers),
        latency_ms=[a.latency_ms for a in answers],
    )


def ask_all(
    clients: ModeClients,
    questions: Sequence[MultipleChoiceQuestion],
    settings: EvalSettings,
    progress: bool = True,
) -> list[Answer]:
    """Every question in every mode; modes interleave per question so drift hits all alike."""
    runs = _runs(settings, clients.sharer is not None)
    answers = []
    with tqdm(total=len(questions) * len(runs), desc="eval", disable=not progress) as bar:
        for index, question in enumerate(questions):
            for mode, codec in runs:
                answers.append(ask(clients, index, question, mode, codec, settings))
                bar.update(1)
    return answers


def _points(a: float, b: float) -> float:
    return round(100 * (a - b), 2)


def report(
    answers: Sequence[Answer], questions: Sequence[MultipleChoiceQuestion], settings: EvalSettings
) -> dict:
    """The JSON report: per-mode accuracy, CI and latency, c2c accuracy per codec, comparisons."""
    reference_codec = "fp16" if "fp16" in settings.codecs else settings.codecs[0]
    modes: dict[str, dict] = {}
    codecs: dict[str, float] = {}
    codec_details: dict[str, dict] = {}
    for mode in settings.modes:
        for codec in settings.codecs if mode == "c2c" else ("",):
            chosen = [a for a in answers if a.mode == mode and a.codec == codec]
            if not chosen:
                continue
            summary = score(chosen).summary()
            if mode == "c2c":
                summary["bytes_on_wire_mean"] = statistics.fmean(a.bytes_on_wire for a in chosen)
                summary["fallbacks"] = sum(a.mode_used != "c2c" for a in chosen)
                codecs[codec] = summary["accuracy"]
                codec_details[codec] = summary
            if mode != "c2c" or codec == reference_codec:
                modes[mode] = summary
    result = {
        "n_questions": len(questions),
        "scoring": "generated_text",
        "modes": modes,
        "codecs": codecs,
        "codec_details": codec_details,
    }
    comparisons = {}
    if "c2c" in modes and "receiver_only" in modes:
        comparisons["c2c_minus_receiver_only_points"] = _points(
            modes["c2c"]["accuracy"], modes["receiver_only"]["accuracy"]
        )
    if "c2c" in modes and "text" in modes:
        comparisons["c2c_minus_text_points"] = _points(
            modes["c2c"]["accuracy"], modes["text"]["accuracy"]
        )
        text_p50 = modes["text"]["latency_ms_p50"]
        comparisons["c2c_over_text_latency_p50"] = (
            round(modes["c2c"]["latency_ms_p50"] / text_p50, 3) if text_p50 else None
        )
    for codec in ("int8", "int4"):
        if codec in codecs and reference_codec in codecs and codec != reference_codec:
            comparisons[f"{codec}_minus_{reference_codec}_points"] = _points(
                codecs[codec], codecs[reference_codec]
            )
    result["comparisons"] = comparisons
    return result


def sample_questions(
    questions: list[MultipleChoiceQuestion], limit: int | None, seed: int
) -> list[MultipleChoiceQuestion]:
    """All questions, or a seeded sample of ``limit`` of them (files are often sorted by topic)."""
    if limit is None or limit >= len(questions):
        return questions
    return random.Random(seed).sample(questions, limit)


def format_table(result: dict) -> str:
    """The report as a few aligned lines for a terminal."""
    lines = [f"{'mode':<15}{'accuracy':>10}  {'95% CI':<15}{'p50 ms':>9}{'p90 ms':>9}"]
    for mode, summary in result["modes"].items():
        lo, hi = summary["ci95"]
        lines.append(
            f"{mode:<15}{summary['accuracy']:>10.3f}  [{lo:.3f}, {hi:.3f}]  "
            f"{summary['latency_ms_p50']:>9.1f}{summary['latency_ms_p90']:>9.1f}"
        )
    for codec, detail in result["codec_details"].items():
        lines.append(
            f"{'c2c ' + codec:<15}{detail['accuracy']:>10.3f}  "
            f"bytes/request {detail['bytes_on_wire_mean']:.0f}"
        )
    return "\n".join(lines)


def evaluate(
    questions: list[MultipleChoiceQuestion],
    settings: EvalSettings,
    receiver: str | None = None,
    sharer: str | None = None,
    paths: PairPaths | None = None,
    loglik: bool = False,
    progress: bool = True,
    answers_sink: list[Answer] | None = None,
) -> dict:
    """Ask ``questions`` through the services at ``receiver`` (or a local pair started from
    ``paths``) and return the report; ``loglik`` adds choice-likelihood scores (local models).
    Every answer is also appended to ``answers_sink`` when one is given."""
    started = local_pair(paths) if receiver is None else nullcontext(None)
    with started as addresses:
        if addresses is not None:
            receiver, sharer = addresses.receiver, addresses.sharer
        clients = ModeClients(receiver, sharer)
        try:
            answers = ask_all(clients, questions, settings, progress)
        finally:
            clients.close()
    if answers_sink is not None:
        answers_sink.extend(answers)
    result = report(answers, questions, settings)
    if loglik and paths is not None:
        from c2c.option_likelihood import likelihood_scores

        result["loglik"] = likelihood_scores(paths, questions, progress=progress)
    return result


def eval_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    receiver: Annotated[
        str | None,
        typer.Option(help="A running receiver service, HOST:PORT (default: start the pair)."),
    ] = None,
    sharer: Annotated[
        str | None,
        typer.Option(help="The running sharer, HOST:PORT, for sharer_only (with --receiver)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Ask a seeded sample of this many questions.")
    ] = None,
    questions: Annotated[
        Path | None,
        typer.Option(help="JSONL of MMLU-style questions (default: the bundled set)."),
    ] = None,
    receiver_model: ReceiverModelOption = None,
    sharer_model: SharerModelOption = None,
    fuser: FuserOption = None,
    mode: Annotated[
        list[str] | None, typer.Option(help=f"Modes to run (repeatable): {', '.join(MODES)}.")
    ] = None,
    codec: Annotated[
        list[str] | None, typer.Option(help=f"KV codecs for c2c (repeatable): {', '.join(CODECS)}.")
    ] = None,
    loglik: Annotated[
        bool, typer.Option(help="Also score by choice likelihood (local models only).")
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per answer.")] = 6,
    seed: Annotated[int, typer.Option(help="Seed of the --limit sample.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON report here.")] = None,
    answers_out: Annotated[
        Path | None,
        typer.Option("--answers", help="Write every answer (mode, codec, text, choice) as JSONL."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Accuracy (95% CI) and latency of receiver_only, sharer_only, text and c2c, side by side."""
    modes, codecs = tuple(mode or MODES), tuple(codec or CODECS)
    for given, allowed, what in ((modes, MODES, "mode"), (codecs, CODECS, "codec")):
        unknown = [g for g in given if g not in allowed]
        if unknown:
            typer.echo(
                f"error: unknown {what} {unknown[0]!r}; expected {', '.join(allowed)}", err=True
            )
            raise typer.Exit(2)
    try:
        paths = None
        if receiver is None or loglik:
            paths = pair_paths(receiver_model, sharer_model, fuser)
        questions = questions or bundled_questions()
        chosen = sample_questions(load_questions(questions), limit, seed)
        settings = EvalSettings(modes=modes, codecs=codecs, max_new_tokens=max_new_tokens)
        answers: list[Answer] = []
        result = evaluate(chosen, settings, receiver, sharer, paths, loglik, progress, answers)
    except (QuestionFileError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    except (C2CError, ValueError, PairStartError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    except grpc.RpcError as error:
        typer.echo(f"error: {error.code().name}: {error.details()}", err=True)
        raise typer.Exit(1) from None
    result["questions_file"] = str(questions)
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
    if answers_out is not None:
        with answers_out.open("w") as f:
            for answer in answers:
                record = {**asdict(answer), "question_text": chosen[answer.question].question}
                f.write(json.dumps(record) + "\n")
    typer.echo(json.dumps(result, indent=2) if json_output else format_table(result))
