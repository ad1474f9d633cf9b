"""Entry point: builds the Typer app from every command module in ``boomerang.cli``."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click
import typer

from .. import interrupts
from ..errors import BoomerangError
from ..io.atomic import ENVIRONMENT_ERRNOS, temp_dir_error, write_error
from ..io.snapshot import reading
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


def _classes(name: str, *public: type) -> tuple[type[BaseException], ...]:
    """``click``'s exception class ``name`` and typer's copy of it (typer >= 0.29 vendors click as
    ``typer._click``, whose classes are not click's); found through typer's public exception classes."""
    found = {getattr(click.exceptions, name)}
    for cls in public:
        found.update(c for c in cls.__mro__ if c.__name__ == name)
    return tuple(found)


_USAGE = _classes("ClickException", typer.BadParameter)  # usage errors: unknown command/option, missing value
_EXIT = _classes("Exit", typer.Exit)
_ABORT = _classes("Abort", typer.Abort)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status (0 ok, 2 bad input, 130 interrupted)."""
    try:
        # every checkpoint a command reads is held (one version, or a clear stop); Ctrl-C always stops it
        with reading(), interrupts.catching():
            result = app(args=argv, prog_name="boomerang", standalone_mode=False)
            # typer >= 0.29 turns Ctrl-C into a silent ``Exit(130)``: say how to carry on all the same
            if interrupts.pending():
                return _interrupted()
        return result if isinstance(result, int) else 0
    except BoomerangError as e:
        from rich.markup import escape  # messages are plain text: "pkg[extra]" must survive

        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except _EXIT as e:
        return e.exit_code  # type: ignore[attr-defined]
    except _USAGE as e:
        e.show()  # type: ignore[attr-defined]  # click's usage text with its "did you mean" hint
        if getattr(e, "ctx", None) is None:  # raised before a command's context existed: no usage text shown
            err_console.print(
                "Try 'boomerang --help' (or 'boomerang COMMAND --help') for help.", highlight=False
            )
        return e.exit_code  # type: ignore[attr-defined]
    except OSError as e:  # the environment, not a bug: a full disk, a file-size limit, a read-only path
        no_temp = temp_dir_error(e)  # no temporary directory (some libraries need one on import)
        if no_temp is not None:
            from rich.markup import escape

            err_console.print(f"[bold red]error:[/] {escape(str(no_temp))}", highlight=False, soft_wrap=True)
            return 2
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        err_console.print(
            f"[bold red]error:[/] {write_error(e.filename or 'the output', e)}", highlight=False
        )
        return 2
    except (*_ABORT, KeyboardInterrupt):
        return _interrupted()


def _interrupted() -> int:
    """Say that the command was interrupted and how to carry on; exit status 130."""
    from rich.markup import escape

    how = interrupts.hint() or "no partial output was left behind; run the command again to start over"
    err_console.print(f"[yellow]interrupted[/]: {escape(how)}", highlight=False, soft_wrap=True)
    return 130


def main() -> None:
    sys.exit(run())
