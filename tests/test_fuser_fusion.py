"""The whole fuser on the tiny pairs: gates, required layers, fused prompt caches, bad inputs."""

from __future__ import annotations

import pytest
import torch

from c2c.errors import FusionInputError
from fuser.alignment import tokenize_with_spans
from fuser.fused_prefill import fused_prompt_cache, receiver_prefill
from fuser.fuser import C2CFuser, FuserConfig, LayerFusionError
from fuser.projector import ProjectorConfig

PROMPT = "The red cat sleeps. Say the animal and its color:"


def _fuser(receiver, sharer, **overrides) -> C2CFuser:
    torch.manual_seed(0)
    config = FuserConfig(receiver.card, sharer.card, ProjectorConfig(hidden_size=32), **overrides)
    return C2CFuser(config).eval()


def _set_gates(fuser: C2CFuser, logits: dict[int, tuple[float, float]]) -> None:
    with torch.no_grad():
        for layer, projector in fuser.projectors.items():
            projector.gate_logits.copy_(torch.tensor(logits.get(int(layer), (-1.0, -1.0))))


def _prompt(receiver):
    ids, spans = tokenize_with_spans(receiver.tokenizer, PROMPT)
    return ids, spans


def _layer_inputs(fuser: C2CFuser, length=5):
    receiver, sharer = fuser.config.receiver, fuser.config.sharer
    k_r = torch.randn(1, receiver.num_kv_heads, length, receiver.head_dim)
    k_s = torch.randn(1, sharer.num_kv_heads, length, sharer.head_dim)
    return k_r, k_r.clone(), k_s, k_s.clone()


def test_with_every_gate_off_the_fused_cache_is_the_receiver_cache_bit_for_bit(
    tiny_receiver, tiny_qwen2_sharer
):
    fuser = _fuser(tiny_receiver, tiny_qwen2_sharer)
    _set_gates(fuser, {})
    ids, spans = _prompt(tiny_receiver)
    fused = fused_prompt_cache(tiny_receiver, tiny_qwen2_sharer, fuser, ids, PROMPT, spans)
    own = receiver_prefill(tiny_receiver, ids[:-1])
    assert fuser.required_sharer_layers() == []
    for fused_layer, own_layer in zip(fused.layers, own.layers, strict=True):
        assert torch.equal(fused_layer.keys, own_layer.keys)
        assert torch.equal(fused_layer.values, own_layer.values)


def test_only_sharer_layers_feeding_an_open_gate_are_required_in_stream_order(
    tiny_receiver, tiny_qwen2_sharer
):
    fuser = _fuser(tiny_receiver, tiny_qwen2_sharer)
    assert fuser.layer_map() == {0: 2, 1: 3, 2: 4, 3: 5}
    assert fuser.required_sharer_layers() == [2, 3, 4, 5]
    _set_gates(fuser, {3: (1.0, -1.0), 1: (-1.0, 1.0)})
    assert fuser.required_sharer_layers() == [3, 5]


def test_fused_cache_changes_open_layers_and_keeps_closed_and_unmapped_ones(
    tiny_receiver, tiny_llama_sharer
):
    fuser = _fuser(tiny_receiver, tiny_llama_sharer)
    assert fuser.layer_map() == {1: 0, 2: 1, 3: 2}
    _set_gates(fuser, {2: (1.0, -1.0), 3: (1.0, 1.0)})
    ids, spans = _prompt(tiny_receiver)
    fused = fused_prompt_cache(tiny_receiver, tiny_llama_sharer, fuser, ids, PROMPT, spans)
    own = receiver_prefill(tiny_receiver, ids[:-1])
    for layer in (0, 1):
        assert torch.equal(fused.layers[layer].keys, own.layers[layer].keys)
    assert not torch.equal(fused.layers[2].keys, own.layers[2].keys)
    assert torch.equal(fused.layers[2].values, own.layers[2].values)
    assert not torch.equal(fused.layers[3].values, own.layers[3].values)
    assert fused.get_seq_length() == len(ids) - 1


def test_receiver_generates_from_the_fused_cache_with_different_logits(
    tiny_receiver, tiny_llama_sharer
):
    fuser = _fuser(tiny_receiver, tiny_llama_sharer)
    ids, spans = _prompt(tiny_receiver)
    last = torch.tensor([[ids[-1]]])
    with torch.no_grad():
        fused = fused_prompt_cache(tiny_receiver, tiny_llama_sharer, fuser, ids, PROMPT, spans)
        fused_logits = tiny_receiver.model(input_ids=last, cache=fused).logits
        own = receiver_prefill(tiny_receiver, ids[:-1])
        own_logits = tiny_receiver.model(input_ids=last, cache=own).logits
        full_logits = tiny_receiver.model(input_ids=torch.tensor([ids])).logits[:, -1:]
    torch.testing.assert_close(own_logits, full_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fused_logits, own_logits)


def test_first_alignment_runs_end_to_end_too(tiny_receiver, tiny_qwen2_sharer):
    fuser = _fuser(tiny_receiver, tiny_qwen2_sharer, alignment="first", layer_map="proportional")
    ids, spans = _prompt(tiny_receiver)
    fused = fused_prompt_cache(tiny_receiver, tiny_qwen2_sharer, fuser, ids, PROMPT, spans)
    assert fused.get_seq_length() == len(ids) - 1


def test_gradients_reach_the_fuser_but_not_the_models(tiny_receiver, tiny_llama_sharer):
    fuser = _fuser(tiny_receiver, tiny_llama_sharer).train()
    ids, spans = _prompt(tiny_receiver)
    fused = fused_prompt_cache(tiny_receiver, tiny_llama_sharer, fuser, ids, PROMPT, spans)
    logits = tiny_receiver.model(input_ids=torch.tensor([ids[-1:]]), cache=fused).logits
    logits.logsumexp(-1).sum().backward()
    grads = [p.grad for p in fuser.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in tiny_receiver.model.parameters())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda k_r, v_r, k_s, v_s: (k_r, v_r, k_s[:, :1], v_s), "sharer layer 2 keys has 1 heads"),
        (lambda k_r, v_r, k_s, v_s: (k_r[..., :8], v_r, k_s, v_s), "receiver keys has head_dim 8"),
        (
            lambda k_r, v_r, k_s, v_s: (k_r, v_r, k_s, v_s[:, :, :4]),
            "sharer values have batch 1 and sequence length 4",
        ),
        (lambda k_r, v_r, k_s, v_s: (k_r, v_r[0], k_s, v_s), r"expected \[B, H, N, D\]"),
        (lambda k_r, v_r, k_s, v_s: (k_r, v_r, k_s, None), "sharer layer 2 values is missing"),
    ],
)
def test_mismatched_tensors_are_refused_naming_the_layer_and_the_mismatch(
    tiny_receiver, tiny_llama_sharer, mutate, message
):
    fuser = _fuser(tiny_receiver, tiny_llama_sharer)
    with pytest.raises(LayerFusionError, match=f"receiver layer 3: .*{message}") as error:
        fuser.fuse_layer(3, *mutate(*_layer_inputs(fuser)))
    assert isinstance(error.value, FusionInputError) and error.value.layer == 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_in_sharer_tensors_is_refused_naming_the_layer(
    tiny_receiver, tiny_llama_sharer, bad
):
    fuser = _fuser(tiny_receiver, tiny_llama_sharer)
    k_r, v_r, k_s, v_s = _layer_inputs(fuser)
    k_s[0, 0, 2, 1] = bad
    with pytest.raises(
        LayerFusionError, match="receiver layer 2: sharer layer 1 keys contains NaN"
    ):
        fuser.fuse_layer(2, k_r, v_r, k_s, v_s)


def test_layer_outside_the_receiver_is_refused(tiny_receiver, tiny_llama_sharer):
    fuser = _fuser(tiny_receiver, tiny_llama_sharer)
    with pytest.raises(LayerFusionError, match="receiver layer 7: no such layer"):
        fuser.fuse_layer(7, *_layer_inputs(fuser))


def test_missing_sharer_layer_in_fuse_cache_is_refused_naming_both_layers(
    tiny_receiver, tiny_llama_sharer
):
    fuser = _fuser(tiny_receiver, tiny_llama_sharer)
    ids, _ = _prompt(tiny_receiver)
    cache = receiver_prefill(tiny_receiver, ids)
    k_s = torch.zeros(1, 3, len(ids), 16)
    with pytest.raises(LayerFusionError, match="receiver layer 3: sharer layer 2 is missing"):
        fuser.fuse_cache(cache, {0: (k_s, k_s), 1: (k_s, k_s)})


def test_a_closed_layer_needs_no_sharer_data(tiny_receiver, tiny_llama_sharer):
    fuser = _fuser(tiny_receiver, tiny_llama_sharer)
    _set_gates(fuser, {3: (1.0, 1.0)})
    k_r, v_r, _, _ = _layer_inputs(fuser)
    assert fuser.fuse_layer(2, k_r, v_r, None, None) == (k_r, v_r)
