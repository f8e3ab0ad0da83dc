"""Fuser checkpoints: round trip, recorded pair, refusal of another pair."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from c2c.errors import WrongModel
from fuser.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from fuser.fuser import C2CFuser, FuserConfig
from fuser.projector import ProjectorConfig


@pytest.fixture
def saved(tmp_path, tiny_receiver, tiny_llama_sharer):
    torch.manual_seed(0)
    config = FuserConfig(
        tiny_receiver.card, tiny_llama_sharer.card, ProjectorConfig(hidden_size=32), "proportional"
    )
    fuser = C2CFuser(config).eval()
    save_checkpoint(fuser, tmp_path / "ckpt")
    return fuser, tmp_path / "ckpt"


def test_loaded_checkpoint_fuses_exactly_like_the_saved_fuser(
    saved, tiny_receiver, tiny_llama_sharer
):
    fuser, directory = saved
    loaded = load_checkpoint(directory, tiny_receiver.card, tiny_llama_sharer.card)
    k_r = torch.randn(1, 2, 6, 32)
    k_s = torch.randn(1, 3, 6, 16)
    for layer in fuser.layer_map():
        expected = fuser.fuse_layer(layer, k_r, k_r, k_s, k_s)
        actual = loaded.fuse_layer(layer, k_r, k_r, k_s, k_s)
        assert torch.equal(expected[0], actual[0]) and torch.equal(expected[1], actual[1])
    assert not loaded.training


def test_config_records_both_fingerprints_dims_layer_map_and_alignment(saved, tiny_receiver):
    _, directory = saved
    document = json.loads((directory / CONFIG_FILE).read_text())
    config = document["config"]
    assert config["receiver"]["model_fingerprint"] == tiny_receiver.card.model_fingerprint
    assert config["sharer"]["head_dim"] == 16
    assert config["alignment"] == "offsets"
    assert config["projector"]["hidden_size"] == 32
    assert document["layer_map"] == {"0": 0, "1": 1, "2": 1, "3": 2}


def test_checkpoint_for_another_sharer_is_refused_naming_the_sharer(
    saved, tiny_receiver, tiny_qwen2_sharer
):
    _, directory = saved
    with pytest.raises(WrongModel, match="trained for sharer 'llama_sharer'.*'qwen2_sharer'"):
        load_checkpoint(directory, tiny_receiver.card, tiny_qwen2_sharer.card)


def test_checkpoint_for_another_receiver_is_refused_naming_the_receiver(saved, tiny_receiver):
    _, directory = saved
    other = dataclasses.replace(tiny_receiver.card, model_fingerprint="0" * 32)
    with pytest.raises(WrongModel, match="receiver 'receiver' with model_fingerprint"):
        load_checkpoint(directory, receiver=other)


def test_checkpoint_loads_in_bfloat16(saved):
    _, directory = saved
    loaded = load_checkpoint(directory, dtype="bfloat16")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a fuser checkpoint"):
        load_checkpoint(tmp_path)


def test_weights_that_do_not_match_the_config_are_refused(saved, tmp_path):
    _, directory = saved
    document = json.loads((directory / CONFIG_FILE).read_text())
    document["config"]["projector"]["hidden_size"] = 64
    (directory / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE} does not match"):
        load_checkpoint(directory)


def test_config_without_the_pair_is_refused_naming_the_file(saved):
    _, directory = saved
    document = json.loads((directory / CONFIG_FILE).read_text())
    del document["config"]["sharer"]
    (directory / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(ValueError, match=f"{CONFIG_FILE} lacks a valid config"):
        load_checkpoint(directory)
