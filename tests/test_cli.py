"""The `c2c` command's listing and its independence from `ast.parse`."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from typer.testing import CliRunner

from c2c.cli import COMMANDS, app


def leaf_commands(tree: Mapping = COMMANDS, prefix: tuple[str, ...] = ()) -> Iterator:
    for name, (first, second) in tree.items():
        if isinstance(second, Mapping):
            yield from leaf_commands(second, (*prefix, name))
        else:
            yield (*prefix, name), first, second


@pytest.mark.parametrize("path, module, function", list(leaf_commands()))
def test_help_lists_each_command_with_its_docstring_summary(
    path: tuple[str, ...], module: str, function: str
) -> None:
    summary = getattr(importlib.import_module(module), function).__doc__.strip().split("\n")[0]
    result = CliRunner().invoke(app, [*path[:-1], "--help"])
    assert result.exit_code == 0, result.output
    listing = " ".join(result.output.replace("│", " ").split())  # the table, unwrapped
    assert f" {path[-1]} {summary}" in listing


def test_commands_run_and_list_without_ast_parse(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # CPython 3.11's ast.parse fails ("AST constructor recursion depth mismatch") when a garbage
    # collector finalizer re-enters it mid-parse; the CLI must not depend on it.
    def refuse(*args, **kwargs):
        raise AssertionError("ast.parse called")

    missing = tmp_path / "absent.jsonl"
    runner = CliRunner()
    with monkeypatch.context() as patch:  # restored before asserting: pytest's reports parse
        patch.setattr(ast, "parse", refuse)
        listing = runner.invoke(app, ["--help"])
        shown = runner.invoke(app, ["trace", "show", str(missing)])
    assert listing.exit_code == 0 and "Inspect recorded traces." in listing.output, listing
    assert shown.exit_code == 1 and shown.output == f"error: {missing}: no such file\n", shown
