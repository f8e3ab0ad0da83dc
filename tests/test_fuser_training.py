"""`c2c train` between the tiny receiver and a sharer with another tokenizer, depth and head dim."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from c2c.cli import app
from fuser.checkpoint import WEIGHTS_FILE, load_checkpoint
from tests.tiny_models import recall_records

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train faster on one thread than two fighting over a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recall_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "recall.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in recall_records(120, seed=0)))
    return path


def _train(pair, data, out, *extra: str):
    args = [
        "train",
        "--sharer", str(pair.llama_sharer),
        "--receiver", str(pair.receiver),
        "--data", str(data),
        "--out", str(out),
        "--batch-size", "2",
        "--lr", "3e-3",
        "--warmup-steps", "5",
        "--hidden-size", "64",
        "--eval-fraction", "0.2",
        "--no-progress",
        *extra,
    ]  # fmt: skip
    return runner.invoke(app, args)


def test_training_lowers_held_out_response_loss_below_the_receiver_alone(
    tiny_pair_dirs, tiny_receiver, tiny_llama_sharer, recall_data, tmp_path
):
    result = _train(tiny_pair_dirs, recall_data, tmp_path, "--max-steps", "30")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 30
    assert metrics["eval_loss"] < metrics["eval_loss_no_fusion"] - 0.1
    assert json.loads(result.stdout.strip().splitlines()[-1])["eval_loss"] == metrics["eval_loss"]
    fuser = load_checkpoint(tmp_path, tiny_receiver.card, tiny_llama_sharer.card)
    assert fuser.config.alignment == "offsets"


def test_resumed_training_ends_where_an_uninterrupted_run_ends(
    tiny_pair_dirs, recall_data, tmp_path
):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert _train(tiny_pair_dirs, recall_data, straight, "--max-steps", "8").exit_code == 0
    first = _train(
        tiny_pair_dirs, recall_data, interrupted, "--max-steps", "8", "--stop-after-steps", "3"
    )
    assert first.exit_code == 0, first.output
    assert '"stopped_early": true' in first.stdout
    assert not (interrupted / "metrics.json").exists()
    second = _train(tiny_pair_dirs, recall_data, interrupted, "--max-steps", "8", "--resume")
    assert second.exit_code == 0, second.output
    expected, actual = load_file(straight / WEIGHTS_FILE), load_file(interrupted / WEIGHTS_FILE)
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=1e-5, atol=1e-6)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (straight, interrupted)]
    assert metrics[0]["eval_loss"] == pytest.approx(metrics[1]["eval_loss"], rel=1e-4)


def test_chat_message_records_train_through_the_receivers_chat_template(tiny_pair_dirs, tmp_path):
    records = [
        {
            "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["response"]},
            ]
        }
        for r in recall_records(10, seed=1)
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(record) for record in records))
    result = _train(tiny_pair_dirs, data, tmp_path / "out", "--max-steps", "2")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["eval_examples"] == 2


def _one_line_error(result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_missing_receiver_directory_is_a_one_line_usage_error(
    tiny_pair_dirs, recall_data, tmp_path
):
    args = ["train", "--sharer", str(tiny_pair_dirs.llama_sharer), "--receiver"]
    result = runner.invoke(
        app, [*args, str(tmp_path / "nope"), "--data", str(recall_data), "--out", str(tmp_path)]
    )
    _one_line_error(result, 2, "--receiver")


def test_malformed_data_line_is_named(tiny_pair_dirs, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a b c", "response": "d"}\n{"prompt": "x"}\nnot json\n')
    result = _train(tiny_pair_dirs, data, tmp_path / "out", "--max-steps", "1")
    _one_line_error(result, 1, "bad.jsonl:2: expected")


def test_a_directory_without_a_model_is_refused(tiny_pair_dirs, recall_data, tmp_path):
    args = ["train", "--sharer", str(tmp_path), "--receiver", str(tiny_pair_dirs.receiver)]
    result = runner.invoke(app, [*args, "--data", str(recall_data), "--out", str(tmp_path / "o")])
    _one_line_error(result, 1, "no config.json")


def test_resume_without_a_resume_point_is_refused(tiny_pair_dirs, recall_data, tmp_path):
    result = _train(tiny_pair_dirs, recall_data, tmp_path / "fresh", "--resume")
    _one_line_error(result, 1, "no resume point")


def test_unknown_alignment_is_refused(tiny_pair_dirs, recall_data, tmp_path):
    result = _train(tiny_pair_dirs, recall_data, tmp_path / "o", "--alignment", "middle")
    _one_line_error(result, 1, "unknown alignment 'middle'")
