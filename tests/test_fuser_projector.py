"""Projector, gates and layer maps: the per-layer math of the fuser."""

from __future__ import annotations

import pytest
import torch

from fuser.layer_map import build_layer_map
from fuser.projector import LayerProjector, ProjectorConfig, gate_temperature

SMALL = ProjectorConfig(hidden_size=32)


def _inputs(batch=2, length=5):
    torch.manual_seed(0)
    k_r, v_r = torch.randn(batch, 2, length, 8), torch.randn(batch, 2, length, 8)
    k_s, v_s = torch.randn(batch, 3, length, 4), torch.randn(batch, 3, length, 4)
    return k_r, v_r, k_s, v_s


def test_projector_output_has_receiver_shape_and_differs_when_gate_is_on():
    projector = LayerProjector(3, 4, 2, 8, SMALL).eval()
    k_r, v_r, k_s, v_s = _inputs()
    k_new, v_new = projector(k_r, v_r, k_s, v_s, temperature=1.0)
    assert k_new.shape == k_r.shape and v_new.shape == v_r.shape
    assert not torch.equal(k_new, k_r) and not torch.equal(v_new, v_r)


def test_closed_hard_gate_returns_the_receiver_cache_exactly():
    projector = LayerProjector(3, 4, 2, 8, SMALL).eval()
    with torch.no_grad():
        projector.gate_logits.copy_(torch.tensor([-0.5, 2.0]))
    k_r, v_r, k_s, v_s = _inputs()
    k_new, v_new = projector(k_r, v_r, k_s, v_s, temperature=1.0)
    assert projector.hard_gates() == (False, True)
    assert torch.equal(k_new, k_r)
    assert not torch.equal(v_new, v_r)


def test_fusion_at_one_position_depends_only_on_that_position():
    projector = LayerProjector(3, 4, 2, 8, SMALL).eval()
    k_r, v_r, k_s, v_s = _inputs(batch=1, length=6)
    full, _ = projector(k_r, v_r, k_s, v_s, temperature=1.0)
    prefix, _ = projector(k_r[:, :, :3], v_r[:, :, :3], k_s[:, :, :3], v_s[:, :, :3], 1.0)
    torch.testing.assert_close(full[:, :, :3], prefix)


def test_training_gate_is_stochastic_and_differentiable():
    projector = LayerProjector(3, 4, 2, 8, SMALL).train()
    k_r, v_r, k_s, v_s = _inputs()
    first, _ = projector(k_r, v_r, k_s, v_s, temperature=1.0)
    second, _ = projector(k_r, v_r, k_s, v_s, temperature=1.0)
    assert not torch.equal(first, second)
    first.sum().backward()
    assert projector.gate_logits.grad is not None and projector.gate_logits.grad[0] != 0


def test_gate_temperature_anneals_geometrically_from_one_to_a_thousandth():
    assert gate_temperature(0, 100) == pytest.approx(1.0)
    assert gate_temperature(50, 100) == pytest.approx(1.0 * 0.001**0.5)
    assert gate_temperature(100, 100) == pytest.approx(0.001)
    assert gate_temperature(500, 100) == pytest.approx(0.001)


def test_last_aligned_map_pairs_last_layers_and_leaves_front_receiver_layers_unfused():
    assert build_layer_map("last_aligned", 4, 3) == {1: 0, 2: 1, 3: 2}
    assert build_layer_map("last_aligned", 3, 6) == {0: 3, 1: 4, 2: 5}


def test_proportional_map_fuses_every_receiver_layer_at_the_same_relative_depth():
    assert build_layer_map("proportional", 4, 2) == {0: 0, 1: 0, 2: 1, 3: 1}
    assert build_layer_map("proportional", 2, 6) == {0: 0, 1: 3}


def test_unknown_layer_map_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown layer map 'diagonal'"):
        build_layer_map("diagonal", 4, 4)
