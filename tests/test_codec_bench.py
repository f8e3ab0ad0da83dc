"""`c2c bench codec --json`: one JSON object whose int8 and int4 numbers meet issue 2's table."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from c2c.cli import app

LAYOUTS = {"fp16", "bf16", "int8", "int4"}
METRICS = {
    "bytes_ratio",
    "key_rel_err",
    "value_rel_err",
    "encode_gbps",
    "decode_gbps",
    "encode_gbps_wall",
    "decode_gbps_wall",
    "lz4_gain",
}


def run_bench(*options: str) -> dict:
    result = CliRunner().invoke(app, ["bench", "codec", "--json", *options])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_bench_codec_prints_one_json_object_per_layout_shape_and_worst() -> None:
    report = run_bench("--tokens", "256", "--repeat", "1", "--seed", "3")
    assert report["shapes"] == ["1x8x256x128", "1x2x256x64"]
    assert set(report["layouts"]) == LAYOUTS
    for numbers in report["layouts"].values():
        assert set(numbers["shapes"]) == set(report["shapes"])
        for result in [*numbers["shapes"].values(), numbers["worst"]]:
            assert set(result) == METRICS
            assert result["encode_gbps"] > 0 and result["decode_gbps"] > 0
    for layout, cells in report["targets"].items():
        for metric, cell in cells.items():
            assert cell["measured"] == report["layouts"][layout]["worst"][metric]
            assert isinstance(cell["pass"], bool)


def test_bench_codec_int8_and_int4_meet_the_size_and_error_targets() -> None:
    report = run_bench("--tokens", "256", "--repeat", "1")
    worst = {layout: numbers["worst"] for layout, numbers in report["layouts"].items()}
    assert worst["fp16"]["key_rel_err"] == 0 and worst["fp16"]["value_rel_err"] == 0
    assert worst["int8"]["bytes_ratio"] <= 0.52
    assert max(worst["int8"]["key_rel_err"], worst["int8"]["value_rel_err"]) <= 0.01
    assert worst["int4"]["bytes_ratio"] <= 0.29
    assert max(worst["int4"]["key_rel_err"], worst["int4"]["value_rel_err"]) <= 0.10
    for layout in ("int8", "int4"):
        for metric in ("bytes_ratio", "key_rel_err", "value_rel_err"):
            assert report["targets"][layout][metric]["pass"]


def test_bench_codec_refuses_zero_tokens_in_one_line() -> None:
    result = CliRunner().invoke(app, ["bench", "codec", "--json", "--tokens", "0"])
    assert result.exit_code == 2
    assert "--tokens" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_bench_codec_meets_every_target_of_issue_2_at_full_size() -> None:
    report = run_bench("--repeat", "10")
    missed = [
        f"{layout} {metric}: {cell['measured']:.4f} not {cell['target']}"
        for layout, cells in report["targets"].items()
        for metric, cell in cells.items()
        if not cell["pass"]
    ]
    assert not missed, missed
