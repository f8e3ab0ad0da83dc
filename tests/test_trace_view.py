"""`c2c trace show` on files recorded from real spans, ours and a Collector's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from c2c.benchmarks.tracing import otel_free_env
from c2c.cli import app
from tests.otlp_receiver import running_otlp_receiver
from tests.traced_rpc_pair import run_traced_pair

DESCRIBE = "/c2c.v1.Sharer/Describe"


@dataclass
class Recording:
    trace_id: str
    ours: Path  # written by both processes with OTEL_TRACES_EXPORTER=otlp_json_file
    collectors: Path  # what a Collector's file exporter writes for the same spans


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    folder = tmp_path_factory.mktemp("traces")
    ours, collectors = folder / "ours.jsonl", folder / "collector.jsonl"
    with running_otlp_receiver() as collector:
        env = otel_free_env(
            OTEL_TRACES_EXPORTER="otlp_json_file,otlp",
            C2C_OTLP_JSON_FILE=str(ours),
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.grpc_endpoint,
        )
        trace_id = run_traced_pair(env, env).strip()
        collector.wait_for_spans(lambda spans: len(spans) == 7)
        collector.write_otlp_json_lines(collectors)
    yield Recording(trace_id, ours, collectors)


def show(*args: str) -> tuple[int, list[str]]:
    """Exit code and output lines of `c2c trace show ARGS`; an exception the command let escape
    is raised here, with its traceback, rather than read as empty output."""
    result = CliRunner().invoke(app, ["trace", "show", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output.splitlines()


@dataclass
class Row:
    critical: bool
    depth: int
    name: str
    service: str
    text: str


def rows(lines: list[str]) -> list[Row]:
    """Span rows of the waterfall, cut at the columns its header line names."""
    header = lines[1]
    service_column, name_column = header.index("service"), header.rindex("span")
    parsed = []
    for line in lines[2:]:
        if line.startswith("wrote "):
            break
        rest = line[name_column:]
        parsed.append(
            Row(
                critical=line.startswith("*"),
                depth=(len(rest) - len(rest.lstrip(" "))) // 2,
                name=rest.split()[0],
                service=line[service_column:name_column].strip(),
                text=line,
            )
        )
    return parsed


@pytest.mark.parametrize("which", ["ours", "collectors"])
def test_show_prints_the_tree_in_parent_child_order(recording: Recording, which: str) -> None:
    code, lines = show(str(getattr(recording, which)))

    assert code == 0, lines
    assert lines[0].startswith(f"trace {recording.trace_id}  7 spans")
    tree = [(row.depth, row.name, row.service) for row in rows(lines)]
    assert tree == [
        (0, "receiver.generate", "demo-receiver"),
        (1, "receiver.tokenize", "demo-receiver"),
        (1, DESCRIBE, "demo-receiver"),
        (2, "sharer.prefill", "demo-sharer"),
        (3, "sharer.forward", "demo-sharer"),
        (3, "kv.encode", "demo-sharer"),
        (1, "decoding", "demo-receiver"),
    ]


def test_show_prints_key_c2c_attributes(recording: Recording) -> None:
    _, lines = show(str(recording.ours), "--trace-id", recording.trace_id)
    by_name = {row.name: row.text for row in rows(lines)}

    assert "mode=c2c" in by_name["receiver.generate"]
    assert "encoded_bytes=4096" in by_name["kv.encode"]
    assert "new_tokens=4" in by_name["decoding"]


def test_png_is_a_readable_gantt_chart(recording: Recording, tmp_path: Path) -> None:
    out = tmp_path / "trace.png"
    code, lines = show(str(recording.ours), "--png", str(out))

    assert code == 0 and lines[-1] == f"wrote {out}"
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 800 and height >= 200


# A Collector-style file written by hand, so the expected critical path is known exactly:
# root 0-100 ms has children fast (0-30) and slow (0-80) in parallel, then tail (80-100).
# Only fast is off the critical path. A second, earlier trace precedes it in the file.
def span(trace: str, span_id: str, parent: str, name: str, start_ms: int, end_ms: int) -> dict:
    base = 1_700_000_000_000_000_000
    return {
        "traceId": trace,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": 1,
        "startTimeUnixNano": str(base + start_ms * 1_000_000),
        "endTimeUnixNano": str(base + end_ms * 1_000_000),
        "attributes": [{"key": "c2c.layers", "value": {"intValue": "3"}}],
        "status": {"code": 2, "message": "sharer down"} if name == "tail" else {},
    }


OLD, NEW = "a" * 32, "b" * 32


def export_line(service: str, spans: list[dict]) -> str:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
    document = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": spans}]}]}
    return json.dumps(document)


@pytest.fixture
def handwritten(tmp_path: Path) -> Path:
    path = tmp_path / "collector.jsonl"
    lines = [
        export_line("svc-old", [span(OLD, "1" * 16, "", "old.root", -500, -400)]),
        export_line(
            "svc-new",
            [
                span(NEW, "2" * 16, "", "root", 0, 100),
                span(NEW, "3" * 16, "2" * 16, "fast", 0, 30),
                span(NEW, "4" * 16, "2" * 16, "slow", 0, 80),
                span(NEW, "5" * 16, "2" * 16, "tail", 80, 100),
            ],
        ),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_critical_path_skips_the_span_that_ran_in_parallel(handwritten: Path) -> None:
    code, lines = show(str(handwritten))

    assert code == 0, lines
    critical = {row.name: row.critical for row in rows(lines)}
    assert critical == {"root": True, "fast": False, "slow": True, "tail": True}


def test_without_a_trace_id_the_latest_trace_is_shown(handwritten: Path) -> None:
    _, lines = show(str(handwritten))
    assert lines[0].startswith(f"trace {NEW}")


def test_a_trace_id_selects_that_trace(handwritten: Path) -> None:
    _, lines = show(str(handwritten), "--trace-id", OLD.upper())
    assert lines[0].startswith(f"trace {OLD}  1 spans")


def test_error_status_is_shown_with_its_message(handwritten: Path) -> None:
    code, lines = show(str(handwritten))
    assert code == 0, lines
    tail = next(row for row in rows(lines) if row.name == "tail")
    assert "ERROR(sharer down)" in tail.text


def test_missing_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    code, lines = show(str(tmp_path / "absent.jsonl"))
    assert code == 1 and lines == [f"error: {tmp_path / 'absent.jsonl'}: no such file"]


def test_bad_json_line_names_the_line(handwritten: Path) -> None:
    with handwritten.open("a") as out:
        out.write("{not json\n")
    code, lines = show(str(handwritten))
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"error: {handwritten}:3: not JSON")


def test_unknown_trace_id_is_one_line_and_exit_1(handwritten: Path) -> None:
    code, lines = show(str(handwritten), "--trace-id", "c" * 32)
    assert code == 1 and lines == [f"error: trace id {'c' * 32} not found (2 traces in file)"]


def test_malformed_trace_id_is_refused(handwritten: Path) -> None:
    code, lines = show(str(handwritten), "--trace-id", "xyz")
    assert code == 1 and lines == ["error: trace id 'xyz': expected 32 hex digits"]
