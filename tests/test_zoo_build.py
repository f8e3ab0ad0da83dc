"""`c2c zoo build` end to end at smoke sizes: every stage runs through the real CLI, seeded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoConfig

from c2c.model_loading import load_causal_lm
from c2c.zoo.build import BuildConfig, run_build
from c2c.zoo.corpora import render_prompt

STAGES = ["data", "tokenizers", "models", "pretrain", "probe", "fuser"]


def _build(out, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "c2c.cli", "zoo", "build", "--smoke", "--out", str(out)]
    return subprocess.run(command + list(extra), capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    stages = [arg for stage in STAGES for arg in ("--stage", stage)]
    result = _build(out, *stages)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, json.loads(result.stdout)


def test_build_writes_a_qwen3_receiver_and_a_differently_shaped_llama_sharer(built):
    out, _ = built
    receiver = AutoConfig.from_pretrained(out / "receiver")
    sharer = AutoConfig.from_pretrained(out / "sharer")
    assert receiver.architectures == ["Qwen3ForCausalLM"]
    assert sharer.architectures == ["LlamaForCausalLM"]
    assert receiver.num_hidden_layers != sharer.num_hidden_layers
    assert receiver.hidden_size != sharer.hidden_size
    assert receiver.num_key_value_heads != sharer.num_key_value_heads
    assert receiver.head_dim != sharer.head_dim


def test_the_two_tokenizers_split_a_prompt_differently(built):
    out, _ = built
    receiver, sharer = load_causal_lm(out / "receiver"), load_causal_lm(out / "sharer")
    first = json.loads((out / "eval.jsonl").read_text().splitlines()[0])
    prompt = render_prompt_of(first)
    assert receiver.tokenizer.tokenize(prompt) != sharer.tokenizer.tokenize(prompt)
    assert len(receiver.tokenizer) != len(sharer.tokenizer)


def render_prompt_of(record: dict) -> str:
    from c2c.zoo.corpora import MultipleChoiceQuestion

    return render_prompt(
        MultipleChoiceQuestion(record["question"], tuple(record["choices"]), record["answer"])
    )


def test_build_reports_every_stage_and_pretraining_lowers_the_loss(built):
    _, report = built
    assert set(STAGES) <= set(report)
    for model in ("receiver", "sharer"):
        result = report["pretrain"]["result"][model]
        assert result["final_loss"] < result["first_loss"]
    assert 0.0 <= report["probe"]["result"]["sharer_recall_eval_people"] <= 1.0


def test_build_trains_a_fuser_the_pair_accepts(built):
    out, report = built
    from fuser.checkpoint import load_checkpoint

    receiver, sharer = load_causal_lm(out / "receiver"), load_causal_lm(out / "sharer")
    fuser = load_checkpoint(out / "fuser", receiver.card, sharer.card)
    assert fuser.config.alignment == "offsets"
    assert report["fuser"]["result"]["steps"] == BuildConfig.smoke().fuser.max_steps


def test_no_evaluation_question_is_in_any_file_a_model_or_the_fuser_trains_on(built):
    out, _ = built
    questions = [json.loads(line)["question"] for line in (out / "eval.jsonl").open()]
    assert questions
    for name in ("sharer.jsonl", "receiver.jsonl", "fuser.jsonl"):
        text = (out / "training" / name).read_text()
        assert text.strip()
        for question in questions:
            assert json.dumps(question)[1:-1] not in text


def test_the_same_seed_rebuilds_the_same_data(built, tmp_path):
    out, _ = built
    run_build(BuildConfig.smoke(), tmp_path, ("data",))
    for name in ("eval.jsonl", "training/fuser.jsonl", "training/sharer.jsonl"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_an_unknown_stage_is_refused_in_one_line(tmp_path):
    result = _build(tmp_path, "--stage", "distill")
    assert result.returncode == 2
    assert "unknown stage 'distill'" in result.stderr
    assert "Traceback" not in result.stderr
