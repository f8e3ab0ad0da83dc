"""`c2c bench fuser` on CPU: the report's shape, the graph check's verdicts, bad options."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from c2c.benchmarks.fuser import check_graphs, run_fuser_benchmark
from c2c.cli import app
from c2c.model_building import ModelSizes
from fuser.fuser import C2CFuser, FuserConfig
from fuser.graph_runner import FusionGraphRunner
from fuser.projector import ProjectorConfig

RECEIVER = ModelSizes("qwen3", 3, 64, 4, 2, 16, 96)
SHARER = ModelSizes("qwen2", 2, 32, 2, 1, 16, 64)


def test_report_compares_fusion_with_prefill_at_each_length():
    report = run_fuser_benchmark(
        [8, 24], "float32", "cpu", hidden_size=16, repeats=1, graphs=True, graph_check=True,
        receiver_sizes=RECEIVER, sharer_sizes=SHARER, vocab_size=50,
    )  # fmt: skip
    assert report["fused_layers"] == 2
    assert set(report["lengths"]) == {"8", "24"}
    row = report["lengths"]["24"]
    assert row["fusion_all_layers_over_prefill"] == (
        row["fusion_eager_all_layers_ms"] / row["receiver_prefill_ms"]
    )
    # No CUDA here: no graph timings, no graph targets, no graph check, and the report says so.
    assert row["fusion_graphs_all_layers_ms"] is None and report["graph_capture_s"] is None
    assert "graph_check" not in report and list(report["targets"]) == []


def _tiny_fuser(tiny_receiver, tiny_llama_sharer) -> C2CFuser:
    torch.manual_seed(0)
    config = FuserConfig(tiny_receiver.card, tiny_llama_sharer.card, ProjectorConfig(16))
    return C2CFuser(config).eval()


def test_graph_check_passes_a_runner_that_matches_eager(tiny_receiver, tiny_llama_sharer):
    fuser = _tiny_fuser(tiny_receiver, tiny_llama_sharer)
    runner = FusionGraphRunner(fuser, buckets=(4, 16), mode="bucketed_eager")
    result = check_graphs(runner, "float32", seed=0)
    assert result["pass"] and set(result["buckets"]) == {"4", "16"}
    assert result["buckets"]["16"]["lengths"][-1] == 16


def test_graph_check_fails_a_runner_that_drifts(tiny_receiver, tiny_llama_sharer):
    fuser = _tiny_fuser(tiny_receiver, tiny_llama_sharer)

    class DriftingRunner(FusionGraphRunner):
        def fuse_layer(self, *args):
            k_new, v_new = super().fuse_layer(*args)
            return k_new * (1 + 1e-4), v_new

    result = check_graphs(DriftingRunner(fuser, buckets=(4,), mode="bucketed_eager"), "float32", 0)
    assert not result["pass"] and result["buckets"]["4"]["max_rel_err"] > 1e-5


def test_bad_lengths_are_a_one_line_usage_error():
    result = CliRunner().invoke(app, ["bench", "fuser", "--lengths", "128,abc"])
    assert result.exit_code == 2 and "--lengths" in result.output
