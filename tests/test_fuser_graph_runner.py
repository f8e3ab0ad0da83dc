"""The CUDA-graph runner's bucket and padding logic, exercised on CPU through its padded path."""

from __future__ import annotations

import pytest
import torch

from fuser.fuser import C2CFuser, FuserConfig, LayerFusionError
from fuser.graph_runner import FusionGraphRunner
from fuser.projector import ProjectorConfig

BUCKETS = (4, 8, 16)


@pytest.fixture
def fuser(tiny_receiver, tiny_llama_sharer) -> C2CFuser:
    torch.manual_seed(0)
    config = FuserConfig(tiny_receiver.card, tiny_llama_sharer.card, ProjectorConfig(32))
    return C2CFuser(config).eval()


def _inputs(fuser: C2CFuser, length: int, batch: int = 1, scale: float = 1.0):
    receiver, sharer = fuser.config.receiver, fuser.config.sharer
    k_r = scale * torch.randn(batch, receiver.num_kv_heads, length, receiver.head_dim)
    v_r = scale * torch.randn(batch, receiver.num_kv_heads, length, receiver.head_dim)
    k_s = scale * torch.randn(batch, sharer.num_kv_heads, length, sharer.head_dim)
    v_s = scale * torch.randn(batch, sharer.num_kv_heads, length, sharer.head_dim)
    return k_r, v_r, k_s, v_s


def test_each_length_goes_to_the_smallest_bucket_that_holds_it(fuser):
    runner = FusionGraphRunner(fuser, buckets=(16, 4, 8), mode="bucketed_eager")
    assert runner.buckets == (4, 8, 16)
    assert [runner.bucket_for(n) for n in (1, 4, 5, 8, 9, 16, 17)] == [4, 4, 8, 8, 16, 16, None]


@pytest.mark.parametrize("length", [1, 3, 4, 5, 8, 13, 16, 17, 40])
def test_padded_buckets_give_the_eager_numbers_at_every_length(fuser, length):
    runner = FusionGraphRunner(fuser, buckets=BUCKETS, mode="bucketed_eager")
    # Leave large values in every bucket first: stale padding must not leak into results.
    for bucket in BUCKETS:
        runner.fuse_layer(3, *_inputs(fuser, bucket, scale=100.0))
    inputs = _inputs(fuser, length)
    for layer in fuser.layer_map():
        expected = fuser.fuse_layer(layer, *inputs)
        actual = runner.fuse_layer(layer, *inputs)
        torch.testing.assert_close(actual[0], expected[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(actual[1], expected[1], rtol=1e-5, atol=1e-6)


def test_runner_outputs_are_copies_not_views_of_its_buffers(fuser):
    runner = FusionGraphRunner(fuser, buckets=BUCKETS, mode="bucketed_eager")
    first = runner.fuse_layer(3, *_inputs(fuser, 6))
    kept = first[0].clone()
    runner.fuse_layer(3, *_inputs(fuser, 6))
    assert torch.equal(first[0], kept)


def test_closed_gates_and_unmapped_layers_return_the_receiver_tensors(fuser):
    with torch.no_grad():
        fuser.projectors["2"].gate_logits.copy_(torch.tensor([-1.0, 1.0]))
    runner = FusionGraphRunner(fuser, buckets=BUCKETS, mode="bucketed_eager")
    k_r, v_r, k_s, v_s = _inputs(fuser, 5)
    k_new, v_new = runner.fuse_layer(2, k_r, v_r, k_s, v_s)
    assert k_new is k_r and not torch.equal(v_new, v_r)
    assert runner.fuse_layer(0, k_r, v_r, None, None) == (k_r, v_r)


def test_fuse_cache_through_the_runner_matches_the_fuser(fuser, tiny_receiver):
    ids = torch.tensor([list(range(10, 21))])
    cache = tiny_receiver.model(input_ids=ids, use_cache=True).cache
    sharer_kv = {j: _inputs(fuser, 11)[2:] for j in range(3)}
    runner = FusionGraphRunner(fuser, buckets=BUCKETS, mode="bucketed_eager")
    expected, actual = fuser.fuse_cache(cache, sharer_kv), runner.fuse_cache(cache, sharer_kv)
    for want, got in zip(expected.layers, actual.layers, strict=True):
        torch.testing.assert_close(got.keys, want.keys, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.values, want.values, rtol=1e-5, atol=1e-6)


def test_other_batch_sizes_take_the_eager_path(fuser):
    runner = FusionGraphRunner(fuser, buckets=BUCKETS, mode="bucketed_eager")
    inputs = _inputs(fuser, 5, batch=2)
    torch.testing.assert_close(runner.fuse_layer(3, *inputs), fuser.fuse_layer(3, *inputs))


def test_bad_inputs_are_refused_before_touching_the_buffers(fuser):
    runner = FusionGraphRunner(fuser, buckets=BUCKETS, mode="bucketed_eager")
    k_r, v_r, k_s, v_s = _inputs(fuser, 5)
    k_s[0, 0, 1, 0] = float("nan")
    with pytest.raises(LayerFusionError, match="receiver layer 3: sharer layer 2 keys contains"):
        runner.fuse_layer(3, k_r, v_r, k_s, v_s)
    with pytest.raises(LayerFusionError, match="sequence length 4"):
        runner.fuse_layer(3, k_r, v_r, k_s.nan_to_num()[:, :, :4], v_s)


def test_cpu_runs_eager_and_refuses_graph_mode(fuser):
    assert FusionGraphRunner(fuser).mode == "eager"
    with pytest.raises(ValueError, match="CUDA graphs need the fuser on a CUDA device"):
        FusionGraphRunner(fuser, mode="graphs")
    with pytest.raises(ValueError, match="unknown runner mode"):
        FusionGraphRunner(fuser, mode="fast")
