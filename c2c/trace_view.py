"""`c2c trace show`: one request's trace from an OTLP-JSON lines file, as a waterfall.

Reads the files written by ``OTEL_TRACES_EXPORTER=otlp_json_file`` and by the OpenTelemetry
Collector's file exporter (one ``{"resourceSpans": ...}`` document per line), so a trace can be
inspected on a machine with no tracing backend. The critical path is the chain of spans that
decided the request's end time: shortening anything off it would not make the request faster.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

STATUS_ERROR = 2
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


class TraceFileError(ValueError):
    """The file cannot be read as OTLP-JSON lines, or lacks the trace asked for."""


@dataclass
class SpanRecord:
    """One span as read back from a file; times in Unix nanoseconds."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    status_code: int = 0
    status_message: str = ""

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass
class WaterfallRow:
    """A span placed in the tree: its depth, offset from the trace start, critical or not."""

    span: SpanRecord
    depth: int
    offset_ms: float
    critical: bool


@dataclass
class Trace:
    """The spans of one trace in tree order (parents before children, siblings by start)."""

    trace_id: str
    rows: list[WaterfallRow]

    @property
    def duration_ms(self) -> float:
        start = min(row.span.start_ns for row in self.rows)
        end = max(row.span.end_ns for row in self.rows)
        return (end - start) / 1e6

    @property
    def services(self) -> list[str]:
        return sorted({row.span.service for row in self.rows})


def load_spans(path: Path) -> list[SpanRecord]:
    """Every span in an OTLP-JSON lines file; lines holding metrics or logs are skipped."""
    if not path.is_file():
        raise TraceFileError(f"{path}: no such file")
    spans: list[SpanRecord] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                document = json.loads(line)
            except json.JSONDecodeError as error:
                raise TraceFileError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(document, dict):
                raise TraceFileError(f"{path}:{number}: expected a JSON object per line")
            try:
                spans.extend(_spans_of(document))
            except (KeyError, TypeError, ValueError) as error:
                raise TraceFileError(
                    f"{path}:{number}: not an OTLP trace export ({error})"
                ) from None
    return spans


def _spans_of(document: dict) -> list[SpanRecord]:
    found = []
    for resource_spans in document.get("resourceSpans", []):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", "unknown_service"))
        # "instrumentationLibrarySpans": what Collectors before OTLP 0.15 wrote.
        scopes = resource_spans.get("scopeSpans") or resource_spans.get(
            "instrumentationLibrarySpans", []
        )
        for scope_spans in scopes:
            for span in scope_spans.get("spans", []):
                status = span.get("status", {})
                found.append(
                    SpanRecord(
                        trace_id=span["traceId"].lower(),
                        span_id=span["spanId"].lower(),
                        parent_id=span.get("parentSpanId", "").lower(),
                        name=span["name"],
                        service=service,
                        start_ns=int(span["startTimeUnixNano"]),
                        end_ns=int(span["endTimeUnixNano"]),
                        attributes=_attributes(span.get("attributes", [])),
                        events=[event["name"] for event in span.get("events", [])],
                        status_code=_status_code(status.get("code", 0)),
                        status_message=status.get("message", ""),
                    )
                )
    return found


def _status_code(code: int | str) -> int:
    names = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
    return names[code] if isinstance(code, str) else int(code)


def _attributes(pairs: list[dict]) -> dict[str, Any]:
    return {pair["key"]: _any_value(pair.get("value", {})) for pair in pairs}


def _any_value(value: dict) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_any_value(item) for item in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return _attributes(value["kvlistValue"].get("values", []))
    return None


def select_trace(spans: list[SpanRecord], trace_id: str | None = None) -> Trace:
    """The trace with ``trace_id`` (32 hex digits), or the one that ended last."""
    if not spans:
        raise TraceFileError("the file holds no spans")
    by_trace: dict[str, list[SpanRecord]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    if trace_id is None:
        wanted = max(by_trace, key=lambda tid: max(span.end_ns for span in by_trace[tid]))
    else:
        wanted = trace_id.strip().lower()
        if not _TRACE_ID.match(wanted):
            raise TraceFileError(f"trace id {trace_id!r}: expected 32 hex digits")
        if wanted not in by_trace:
            raise TraceFileError(f"trace id {wanted} not found ({len(by_trace)} traces in file)")
    return _as_tree(wanted, by_trace[wanted])


def _as_tree(trace_id: str, spans: list[SpanRecord]) -> Trace:
    known = {span.span_id for span in spans}
    children: dict[str, list[SpanRecord]] = {}
    roots = []
    for span in spans:
        if span.parent_id and span.parent_id in known:
            children.setdefault(span.parent_id, []).append(span)
        else:
            roots.append(span)
    for siblings in children.values():
        siblings.sort(key=lambda span: (span.start_ns, span.name))
    roots.sort(key=lambda span: span.start_ns)
    trace_start = roots[0].start_ns
    critical = _critical_path(roots[0], children, roots[0].end_ns)

    rows: list[WaterfallRow] = []

    def visit(span: SpanRecord, depth: int) -> None:
        offset = (span.start_ns - trace_start) / 1e6
        rows.append(WaterfallRow(span, depth, offset, span.span_id in critical))
        for child in children.get(span.span_id, []):
            visit(child, depth + 1)

    for root in roots:
        visit(root, 0)
    return Trace(trace_id, rows)


def _critical_path(
    span: SpanRecord, children: dict[str, list[SpanRecord]], window_end: int
) -> set[str]:
    """Walk back from the span's end: the last child to finish is critical, then the last one
    to finish before that child started, and so on, recursively."""
    path = {span.span_id}
    cursor = min(span.end_ns, window_end)
    for child in sorted(children.get(span.span_id, []), key=lambda c: c.end_ns, reverse=True):
        if child.start_ns < cursor:
            path |= _critical_path(child, children, cursor)
            cursor = child.start_ns
    return path


_SHOWN_ATTRIBUTE_PREFIXES = ("c2c.", "rpc.grpc.status_code")


def _key_attributes(span: SpanRecord, limit: int = 100) -> str:
    parts = [
        f"{key.removeprefix('c2c.')}={_short(value)}"
        for key, value in span.attributes.items()
        if key.startswith(_SHOWN_ATTRIBUTE_PREFIXES)
    ]
    parts += [f"!{event}" for event in span.events]
    if span.status_code == STATUS_ERROR:
        parts.insert(0, f"ERROR({span.status_message})" if span.status_message else "ERROR")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ",".join(_short(item) for item in value)
    return str(value)


def render_waterfall(trace: Trace, bar_width: int = 30) -> str:
    """The trace as text: one row per span, tree-indented, critical path marked with ``*``."""
    total_ms = max(trace.duration_ms, 1e-9)
    name_width = max(2 * row.depth + len(row.span.name) for row in trace.rows)
    service_width = max(len(row.span.service) for row in trace.rows)
    lines = [
        f"trace {trace.trace_id}  {len(trace.rows)} spans  {trace.duration_ms:.2f} ms  "
        f"services: {', '.join(trace.services)}  (* = critical path)",
        f"  {'start ms':>9} {'dur ms':>9}  {'':{bar_width}}  {'service':<{service_width}}  span",
    ]
    for row in trace.rows:
        begin = int(row.offset_ms / total_ms * bar_width)
        length = max(1, round(row.span.duration_ms / total_ms * bar_width))
        bar = (" " * begin + "#" * length)[:bar_width].ljust(bar_width)
        name = "  " * row.depth + row.span.name
        lines.append(
            f"{'*' if row.critical else ' '} {row.offset_ms:9.2f} {row.span.duration_ms:9.2f}  "
            f"{bar}  {row.span.service:<{service_width}}  {name:<{name_width}}  "
            f"{_key_attributes(row.span)}".rstrip()
        )
    return "\n".join(lines)


def draw_gantt(trace: Trace, out: Path) -> None:
    """The same waterfall as a Gantt chart PNG: one bar per span, coloured by service."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    services = trace.services
    palette = pyplot.get_cmap("tab10")
    colours = {service: palette(index % 10) for index, service in enumerate(services)}
    height = 1.0 + 0.32 * len(trace.rows)
    figure, axes = pyplot.subplots(figsize=(12, height))
    for index, row in enumerate(trace.rows):
        axes.barh(
            index,
            max(row.span.duration_ms, trace.duration_ms / 1000),
            left=row.offset_ms,
            color=colours[row.span.service],
            edgecolor="black" if row.critical else "none",
            linewidth=1.5 if row.critical else 0,
            hatch="//" if row.span.status_code == STATUS_ERROR else None,
        )
    labels = [
        ("* " if row.critical else "  ") + "  " * row.depth + row.span.name for row in trace.rows
    ]
    width = max(len(label) for label in labels)
    axes.set_yticks(range(len(trace.rows)))
    # Padded to one width: tick labels are right-aligned, which would hide the indentation.
    axes.set_yticklabels(
        [label.ljust(width) for label in labels], fontfamily="monospace", fontsize=8
    )
    axes.invert_yaxis()
    axes.set_xlabel("ms since trace start")
    axes.set_title(f"trace {trace.trace_id} ({trace.duration_ms:.1f} ms); outlined = critical path")
    handles = [pyplot.Rectangle((0, 0), 1, 1, color=colours[s]) for s in services]
    axes.legend(
        handles, services, loc="upper right", bbox_to_anchor=(1.0, -0.08), ncol=len(services)
    )
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    pyplot.close(figure)


def show_command(
    file: Annotated[Path, typer.Argument(help="OTLP-JSON lines file (ours or a Collector's).")],
    trace_id: Annotated[
        str | None,
        typer.Option("--trace-id", help="32 hex digits, e.g. a reply's trace_id; default: latest."),
    ] = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="Also draw the waterfall as a Gantt chart PNG.")
    ] = None,
) -> None:
    """Print one request's trace as a waterfall tree with its critical path marked."""
    try:
        trace = select_trace(load_spans(file), trace_id)
    except (TraceFileError, OSError, UnicodeDecodeError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(render_waterfall(trace))
    if png is not None:
        try:
            draw_gantt(trace, png)
        except OSError as error:
            typer.echo(f"error: cannot write {png}: {error.strerror}", err=True)
            raise typer.Exit(code=1) from None
        typer.echo(f"wrote {png}")
