"""The shipped pair: complete, small, the architectures the issue asks for, rebuildable data."""

from __future__ import annotations

import json

from c2c.bundled import bundled_pair
from c2c.model_loading import read_dims
from c2c.zoo.build import BuildConfig, run_build
from fuser.checkpoint import check_pair, read_checkpoint_config
from fuser.fuser import FuserConfig


def test_the_bundle_is_complete_and_within_25_megabytes():
    pair = bundled_pair()
    total = sum(
        path.stat().st_size
        for folder in (pair.receiver, pair.sharer, pair.fuser)
        for path in folder.iterdir()
    )
    assert total + pair.eval_questions.stat().st_size <= 25 * 2**20
    assert (pair.receiver.parent / "CARD.md").is_file()


def test_receiver_is_qwen3_and_sharer_a_differently_shaped_llama_with_another_tokenizer():
    pair = bundled_pair()
    receiver, sharer = read_dims(pair.receiver), read_dims(pair.sharer)
    assert receiver.architecture == "Qwen3ForCausalLM"
    assert sharer.architecture == "LlamaForCausalLM"
    assert receiver.num_layers != sharer.num_layers
    assert receiver.num_kv_heads != sharer.num_kv_heads
    assert receiver.head_dim != sharer.head_dim
    assert receiver.tokenizer_fingerprint != sharer.tokenizer_fingerprint


def test_the_fuser_checkpoint_belongs_to_the_bundled_pair():
    pair = bundled_pair()
    config = FuserConfig.from_dict(read_checkpoint_config(pair.fuser)["config"])
    check_pair(config, read_dims(pair.receiver), read_dims(pair.sharer))


def test_the_bundled_questions_are_rebuilt_exactly_from_the_seed_and_never_trained_on(tmp_path):
    pair = bundled_pair()
    run_build(BuildConfig(), tmp_path, ("data",))
    assert (tmp_path / "eval.jsonl").read_bytes() == pair.eval_questions.read_bytes()
    questions = [json.loads(line)["question"] for line in pair.eval_questions.open()]
    assert len(questions) >= 1000
    training = {
        name: (tmp_path / "training" / name).read_text()
        for name in ("sharer.jsonl", "receiver.jsonl", "fuser.jsonl")
    }
    for question in questions:
        needle = json.dumps(question)[1:-1]
        assert all(needle not in text for text in training.values())
