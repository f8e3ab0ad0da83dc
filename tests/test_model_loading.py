"""Model loading, cards, fingerprints and the tiny tokenizers' offsets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from c2c.errors import UnsupportedModel
from c2c.model_loading import (
    card_from_proto,
    card_to_proto,
    load_causal_lm,
    model_fingerprint,
    read_dims,
)
from tests.tiny_models import TRICKY_TEXTS


def test_cards_report_each_familys_cache_shape(tiny_receiver, tiny_llama_sharer, tiny_qwen2_sharer):
    for loaded in (tiny_receiver, tiny_llama_sharer, tiny_qwen2_sharer):
        ids = loaded.tokenizer("The red cat sleeps.", return_tensors="pt").input_ids
        cache = loaded.model(ids, use_cache=True).cache
        card = loaded.card
        assert len(cache.layers) == card.num_layers
        assert cache.layers[0].keys.shape == (1, card.num_kv_heads, ids.shape[1], card.head_dim)
    assert tiny_receiver.card.architecture == "Qwen3ForCausalLM"
    assert (tiny_qwen2_sharer.card.architecture, tiny_qwen2_sharer.card.head_dim) == (
        "Qwen2ForCausalLM",
        16,
    )


def test_loaded_model_is_frozen_and_in_eval_mode(tiny_receiver):
    assert not tiny_receiver.model.training
    assert not any(p.requires_grad for p in tiny_receiver.model.parameters())


def test_model_fingerprint_is_stable_and_changes_with_one_weight(tiny_pair_dirs, tmp_path):
    source = tiny_pair_dirs.llama_sharer
    assert model_fingerprint(source) == model_fingerprint(source)
    copy = Path(shutil.copytree(source, tmp_path / "copy"))
    assert model_fingerprint(copy) == model_fingerprint(source)
    weights = load_file(copy / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1.0
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert model_fingerprint(copy) != model_fingerprint(source)


def test_tokenizer_fingerprint_tells_the_two_tokenizers_apart(
    tiny_receiver, tiny_llama_sharer, tiny_qwen2_sharer
):
    assert (
        tiny_llama_sharer.card.tokenizer_fingerprint == tiny_qwen2_sharer.card.tokenizer_fingerprint
    )
    assert tiny_receiver.card.tokenizer_fingerprint != tiny_llama_sharer.card.tokenizer_fingerprint


def test_card_survives_the_proto_round_trip(tiny_receiver):
    message = card_to_proto(tiny_receiver.card, max_prompt_tokens=2048, version="0.1.0")
    assert message.max_prompt_tokens == 2048
    assert card_from_proto(message) == tiny_receiver.card


def test_built_model_loads_with_plain_from_pretrained(tiny_pair_dirs):
    model = AutoModelForCausalLM.from_pretrained(tiny_pair_dirs.receiver)
    assert model.config.head_dim == 32


def test_unsupported_architecture_is_refused_by_name(tiny_pair_dirs, tmp_path):
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    shutil.copy(tiny_pair_dirs.receiver / "tokenizer.json", tmp_path)
    with pytest.raises(UnsupportedModel, match="GPT2LMHeadModel"):
        load_causal_lm(tmp_path)


def test_sliding_window_layers_are_refused(tiny_pair_dirs, tmp_path):
    copy = Path(shutil.copytree(tiny_pair_dirs.receiver, tmp_path / "sliding"))
    config = json.loads((copy / "config.json").read_text())
    config["layer_types"] = ["sliding_attention", "full_attention"] * 2
    config["use_sliding_window"] = True
    config["sliding_window"] = 16
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModel, match="sliding_attention"):
        read_dims(copy)


def test_directory_without_a_model_is_refused(tmp_path):
    with pytest.raises(UnsupportedModel, match="no config.json"):
        load_causal_lm(tmp_path)


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_both_tokenizers_give_offsets_inside_the_text(tiny_receiver, tiny_llama_sharer, text):
    for tokenizer in (tiny_receiver.tokenizer, tiny_llama_sharer.tokenizer):
        encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        offsets = encoded["offset_mapping"]
        assert len(offsets) == len(encoded["input_ids"]) > 0
        assert all(0 <= start < end <= len(text) for start, end in offsets)


def test_tokenizers_really_split_text_differently(tiny_receiver, tiny_llama_sharer):
    text = " ".join(TRICKY_TEXTS)
    ends = [
        [end for _, end in tokenizer(text, return_offsets_mapping=True)["offset_mapping"]]
        for tokenizer in (tiny_receiver.tokenizer, tiny_llama_sharer.tokenizer)
    ]
    assert ends[0] != ends[1]
    assert len(tiny_receiver.tokenizer) != len(tiny_llama_sharer.tokenizer)


def test_receiver_tokenizer_has_a_chat_template(tiny_receiver):
    text = tiny_receiver.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_unknown_dtype_is_refused(tiny_pair_dirs):
    with pytest.raises(ValueError, match="unknown dtype"):
        load_causal_lm(tiny_pair_dirs.receiver, dtype="float8")
