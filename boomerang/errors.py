"""The one exception type users see: a message that names the problem and the fix."""

from __future__ import annotations

import importlib
from typing import Any


class BoomerangError(ValueError):
    """Bad input or an impossible request. The CLI prints the message and exits with status 2."""


def require(module: str, extra: str, purpose: str) -> Any:
    """Import an optional dependency, or raise a BoomerangError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0]:  # installed, but one of its own dependencies is missing
            raise
        raise BoomerangError(
            f"{purpose} needs the optional package {module!r}: pip install 'boomerang-distill[{extra}]'"
        ) from None
