"""`c2c eval`: scoring, intervals, question files, and the whole run through the real services."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from c2c.cli import app
from c2c.evaluation import (
    QuestionFileError,
    load_questions,
    parse_choice,
    percentile,
    wilson_interval,
)
from c2c.zoo.corpora import MultipleChoiceQuestion
from tests.service_harness import save_random_fuser

QUESTIONS = [
    {"question": "Which town does Zorvik live in?", "choices": ["Ambridge", "Fallow", "Kestrel",
     "Corvale"], "answer": 1},
    {"question": "What job does Talmera have?", "choices": ["baker", "sailor", "miner", "smith"],
     "answer": "D"},
    {"question": "What pet does Brisko look after?", "choices": ["fox", "owl", "goat", "cat"],
     "answer": 0},
]  # fmt: skip


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "c2c.cli", "eval", *args],
        capture_output=True,
        text=True,
        timeout=280,
    )


@pytest.fixture(scope="module")
def questions_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("questions") / "mc.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


@pytest.fixture(scope="module")
def pair_options(tiny_pair_dirs, tmp_path_factory):
    fuser = save_random_fuser(
        tiny_pair_dirs.receiver, tiny_pair_dirs.llama_sharer, tmp_path_factory.mktemp("fuser")
    )
    return [
        "--receiver-model", str(tiny_pair_dirs.receiver),
        "--sharer-model", str(tiny_pair_dirs.llama_sharer),
        "--fuser", str(fuser),
    ]  # fmt: skip


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_percentile_interpolates_between_ranks():
    assert percentile([10.0, 20.0, 30.0, 40.0], 50) == 25.0
    assert percentile([5.0], 90) == 5.0
    assert percentile([], 50) == 0.0


def test_an_answer_is_read_from_its_letter_or_else_from_a_choice_it_names():
    question = MultipleChoiceQuestion("Q?", ("Ambridge", "Fallow", "Kestrel", "Corvale"), 1)
    assert parse_choice(" B", question) == 1
    assert parse_choice("(C) because", question) == 2
    assert parse_choice(" Zorvik lives in Fallow.", question) == 1
    assert parse_choice(" nobody knows", question) is None
    assert parse_choice(" E", question) is None


def test_questions_load_with_index_or_letter_answers(questions_file):
    loaded = load_questions(questions_file)
    assert [q.answer for q in loaded] == [1, 3, 0]
    assert loaded[1].choices == ("baker", "sailor", "miner", "smith")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"question": "Q?", "choices": ["a"], "answer": 0}', "'choices' must be a list of 2"),
        ('{"question": "Q?", "choices": ["a", "b"], "answer": 2}', "'answer' must be a choice"),
        ('{"choices": ["a", "b"], "answer": 0}', "'question' must be a non-empty string"),
    ],
)
def test_a_bad_question_line_is_refused_naming_file_and_line(tmp_path, line, problem):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(QUESTIONS[0]) + "\n" + line + "\n")
    with pytest.raises(QuestionFileError, match=f"q.jsonl:2: {problem}"):
        load_questions(path)


def test_the_cli_refuses_a_missing_questions_file_in_one_line(tmp_path, pair_options):
    missing = tmp_path / "absent.jsonl"
    result = CliRunner().invoke(app, ["eval", "--questions", str(missing), *pair_options])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: questions file {tmp_path / 'absent.jsonl'} does not exist"
    ]


def test_the_cli_refuses_a_bad_jsonl_line_in_one_line(tmp_path, pair_options):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(QUESTIONS[0]) + "\n{oops\n")
    result = CliRunner().invoke(app, ["eval", "--questions", str(path), *pair_options])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path}:2: not valid JSON (Expecting property name enclosed in double quotes)"
    ]


def test_the_cli_reports_an_unreachable_receiver_in_one_line(questions_file):
    result = CliRunner().invoke(
        app,
        ["eval", "--receiver", "127.0.0.1:1", "--questions", str(questions_file), "--no-progress"],
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: UNAVAILABLE")
    assert "Traceback" not in result.stderr


def test_eval_runs_every_mode_and_codec_through_started_services(
    tmp_path, questions_file, pair_options
):
    answers_path = tmp_path / "answers.jsonl"
    result = _eval(
        "--json", "--questions", str(questions_file), "--limit", "2", "--no-progress",
        "--answers", str(answers_path), *pair_options,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["n_questions"] == 2
    assert set(report["modes"]) == {"receiver_only", "sharer_only", "text", "c2c"}
    assert set(report["codecs"]) == {"fp16", "int8", "int4"}
    answers = [json.loads(line) for line in answers_path.read_text().splitlines()]
    truth = {q["question"]: q for q in load_and_index(questions_file)}
    for mode, summary in report["modes"].items():
        low, high = summary["ci95"]
        assert low <= summary["accuracy"] <= high
        assert 0 < summary["latency_ms_p50"] <= summary["latency_ms_p90"]
        mine = [a for a in answers if a["mode"] == mode and a["codec"] in ("", "fp16")]
        assert len(mine) == 2
        right = sum(a["choice"] == truth[a["question_text"]]["answer"] for a in mine)
        assert summary["accuracy"] == right / 2
    assert (
        report["codec_details"]["int4"]["bytes_on_wire_mean"]
        < (report["codec_details"]["fp16"]["bytes_on_wire_mean"])
    )
    assert all(a["mode_used"] == "c2c" for a in answers if a["mode"] == "c2c")


def load_and_index(path):
    return [{"question": q.question, "answer": q.answer} for q in load_questions(path)]
