"""The `c2c` command: every user-facing subcommand, declared in one place.

Each subcommand's options live on the function that implements it (in its own module); this file
only names them, so `c2c --help` is the map of the project. Modules are imported only when their
command runs: most of them pull in torch and transformers, which would make every `--help` slow.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import types
from collections.abc import Mapping
from typing import Union

import typer
from typer.core import TyperCommand, TyperGroup

Target = tuple[str, str]  # (module, function)
CommandTree = Mapping[str, Union[Target, "tuple[str, CommandTree]"]]

COMMANDS: CommandTree = {
    "generate": ("receiver_service.client", "generate_command"),
    "train": ("fuser.training", "train_command"),
    "eval": ("c2c.evaluation", "eval_command"),
    "demo": ("c2c.demo", "demo_command"),
    "version": ("c2c.cli", "version_command"),
    "bench": (
        "Benchmarks that print JSON.",
        {
            "codec": ("c2c.benchmarks.codec", "codec_command"),
            "fuser": ("c2c.benchmarks.fuser", "fuser_command"),
            "services": ("c2c.benchmarks.services", "services_command"),
            "tracing": ("c2c.benchmarks.tracing", "tracing_command"),
        },
    ),
    "trace": ("Inspect recorded traces.", {"show": ("c2c.trace_view", "show_command")}),
    "zoo": ("Build the bundled model pair.", {"build": ("c2c.zoo.build", "build_command")}),
}


def version_command() -> None:
    """Print the installed version."""
    from c2c import __version__

    typer.echo(__version__)


def _docstring_summary(module: str, function: str) -> str:
    """First docstring line of `module.function`, read from its compiled source without running it.

    Compiled, not ``ast.parse``d: this runs for every command, and CPython 3.11's ``ast.parse``
    fails with "AST constructor recursion depth mismatch" when re-entered, which a garbage
    collector finalizer that logs a traceback (whose formatting parses) does.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin, encoding="utf-8") as source:
        code = compile(source.read(), spec.origin, "exec", dont_inherit=True)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType) and constant.co_name == function:
            return _docstring(constant).split("\n", 1)[0]
    return ""


def _docstring(code: types.CodeType) -> str:
    """A function's docstring from its code object: its first constant, when that is one (3.14
    flags it with CO_HAS_DOCSTRING; before, only a docstring can be a leading string constant)."""
    flag = getattr(inspect, "CO_HAS_DOCSTRING", None)
    if flag is not None and not code.co_flags & flag:
        return ""
    first = code.co_consts[0] if code.co_consts else None
    return inspect.cleandoc(first) if isinstance(first, str) else ""


class LazyCommand(TyperCommand):
    """Stands in for a subcommand in listings; imports its module only when it runs."""

    def __init__(self, name: str, target: Target) -> None:
        super().__init__(name=name, help=_docstring_summary(*target))
        self.target = target

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: typer.Context | None = None,
        **extra: object,
    ) -> typer.Context:
        module, function = self.target
        single = typer.Typer(add_completion=False)
        single.command(self.name)(getattr(importlib.import_module(module), function))
        real = typer.main.get_command(single)
        return real.make_context(info_name, args, parent=parent, **extra)


class LazyGroup(TyperGroup):
    """A command group whose subcommands are named in a tree instead of imported."""

    tree: CommandTree = COMMANDS

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return sorted(self.tree)

    def get_command(self, ctx: typer.Context, name: str) -> TyperCommand | TyperGroup | None:
        entry = self.tree.get(name)
        if entry is None:
            return None
        first, second = entry
        if isinstance(second, Mapping):
            group = LazyGroup(name=name, help=first, no_args_is_help=True)
            group.tree = second
            return group
        return LazyCommand(name, entry)


app = typer.Typer(cls=LazyGroup, no_args_is_help=True, add_completion=False)


@app.callback()
def root() -> None:
    """Cache-to-Cache over gRPC."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
