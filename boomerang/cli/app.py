"""Entry point: builds the Typer app from every command module in ``boomerang.cli``."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click
import typer

from ..errors import BoomerangError
from .common import err_console

app = typer.Typer(
    name="boomerang",
    help="Boomerang distillation: build a family of model sizes from one teacher and one distilled student.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_ORDER = ("core", "train", "family", "evaluate", "analysis", "demo")  # help order; others follow


def _register_all() -> None:
    import boomerang.cli as pkg

    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name not in {"app", "common"}]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in names:
        module = importlib.import_module(f"boomerang.cli.{name}")
        if hasattr(module, "register"):
            module.register(app)


_register_all()


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status (0 ok, 2 bad input, 130 interrupted)."""
    try:
        result = app(args=argv, prog_name="boomerang", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except BoomerangError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("[yellow]interrupted[/]: no partial output was left behind")
        return 130


def main() -> None:
    sys.exit(run())
