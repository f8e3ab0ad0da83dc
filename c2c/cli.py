"""The `c2c` command: every user-facing subcommand, declared in one place.

Each subcommand's options live on the function that implements it (in its own module); this file
only assembles them, so `c2c --help` is the map of the project.
"""

from __future__ import annotations

import typer

from c2c.benchmarks.codec import codec_command
from c2c.benchmarks.fuser import fuser_command
from c2c.benchmarks.services import services_command
from c2c.benchmarks.tracing import tracing_command
from c2c.demo import demo_command
from c2c.evaluation import eval_command
from c2c.trace_view import show_command as trace_show_command
from c2c.zoo.build import build_command as zoo_build_command
from fuser.training import train_command
from receiver_service.client import generate_command

app = typer.Typer(help="Cache-to-Cache over gRPC.", no_args_is_help=True, add_completion=False)
bench_app = typer.Typer(help="Benchmarks that print JSON.", no_args_is_help=True)
trace_app = typer.Typer(help="Inspect recorded traces.", no_args_is_help=True)
zoo_app = typer.Typer(help="Build the bundled model pair.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(trace_app, name="trace")
app.add_typer(zoo_app, name="zoo")
app.command("generate")(generate_command)
app.command("train")(train_command)
bench_app.command("codec")(codec_command)
bench_app.command("tracing")(tracing_command)
bench_app.command("fuser")(fuser_command)
bench_app.command("services")(services_command)
trace_app.command("show")(trace_show_command)
zoo_app.command("build")(zoo_build_command)
app.command("eval")(eval_command)
app.command("demo")(demo_command)


@app.command()
def version() -> None:
    """Print the installed version."""
    from c2c import __version__

    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
