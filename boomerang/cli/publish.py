"""``boomerang publish``: upload a family to the Hugging Face Hub (one repository, members as subfolders)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console


def publish(
    family_dir: Annotated[Path, typer.Argument(help="A family directory written by `boomerang family`.")],
    repo_id: Annotated[str, typer.Argument(help="The Hub model repository, USER/NAME (created if needed).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="List every file that would be uploaded and the family's card; upload nothing."
        ),
    ] = False,
) -> None:
    """Upload a family: members as subfolders, GGUF files, model cards naming the repository, in one commit."""
    from rich.markup import escape

    from ..io.checkpoints import fmt_bytes
    from ..publish import publish as upload

    plan = upload(family_dir, repo_id, private=private, dry_run=dry_run)
    verb = "would upload" if dry_run else "uploaded"
    console.print(f"[bold]{verb}[/] {len(plan.paths)} files ({fmt_bytes(plan.total_bytes)}) to {repo_id}:")
    for p in plan.paths:
        what = "  [dim](model card, rendered for this repository)[/]" if p in plan.cards else ""
        console.print(f"  {escape(p)}  {fmt_bytes(plan.nbytes(p))}{what}", highlight=False, soft_wrap=True)
    if dry_run:
        console.print(
            "\n[bold]README.md[/] (the family's card; each member's card is rendered the same way):\n"
        )
        console.print(plan.cards["README.md"], markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(f"[green]published[/] https://huggingface.co/{repo_id}")


def register(app: typer.Typer) -> None:
    app.command()(publish)
