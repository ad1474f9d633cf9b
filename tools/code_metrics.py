"""Maintainability numbers of the library (issue 27): long functions, many parameters, ``Any`` in public
signatures, imports inside functions, and the functions that resolve a patch order.

    python tools/code_metrics.py [PACKAGE_DIR]     # default: boomerang/
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ORDER_RESOLVERS = (
    "resolve_order",
    "recorded_order",
    "builtin_order",
    "as_order",
    "static_order",
    "_stream_order",
)


def _command_names(tree: ast.Module) -> set[str]:
    """Functions registered as Typer commands: ``app.command(...)(fn)`` or ``@app.command(...)``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Call) and node.args:
            f = node.func.func
            if isinstance(f, ast.Attribute) and f.attr == "command" and isinstance(node.args[0], ast.Name):
                names.add(node.args[0].id)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in node.decorator_list:
                f = d.func if isinstance(d, ast.Call) else d
                if isinstance(f, ast.Attribute) and f.attr == "command":
                    names.add(node.name)
    return names


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "boomerang")
    funcs, any_params, inner_imports, resolvers, commands = [], 0, 0, [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        in_cli = "cli" in path.relative_to(root).parts[:1]
        tree = ast.parse(path.read_text())
        command_names = _command_names(tree) if in_cli else set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs] + [x for x in (a.vararg, a.kwarg) if x]
            params = [p for p in params if p.arg not in ("self", "cls")]
            funcs.append((n, len(params), f"{rel}:{node.lineno} {node.name}", in_cli))
            if node.name in command_names:
                body = node.body[1:] if ast.get_docstring(node) else node.body
                commands.append((node.end_lineno - body[0].lineno + 1, f"{rel}:{node.lineno} {node.name}"))  # type: ignore[operator]
            if not node.name.startswith("_"):
                any_params += sum(
                    1 for p in params if p.annotation is not None and "Any" in ast.unparse(p.annotation)
                )
            if not in_cli:
                inner_imports += sum(
                    isinstance(x, (ast.Import, ast.ImportFrom)) for x in ast.walk(node) if x is not node
                )
            if node.name in ORDER_RESOLVERS or (
                "order" in node.name and node.name.startswith(("resolve", "_resolve"))
            ):
                resolvers.append(f"{rel}:{node.lineno} {node.name}")
    lib = [f for f in funcs if not f[3]]
    cli = [f for f in funcs if f[3]]
    print("five longest library functions:")
    for n, _, where, _ in sorted(lib, reverse=True)[:5]:
        print(f"  {n:4d} lines  {where}")
    print(f"library functions over 80 lines: {sum(n > 80 for n, *_ in lib)}")
    print(f"command functions over 80 lines: {sum(n > 80 for n, *_ in cli)}")
    long = sorted(c for c in commands if c[0] > 40)
    print(
        f"command bodies over 40 lines (after the signature and docstring): {len(long)}"
        + "".join(f"\n  {n} {w}" for n, w in long)
    )
    many = sorted((p, w) for _, p, w, _ in lib if p > 15)
    print(f"library functions over 15 parameters: {len(many)}" + "".join(f"\n  {p} {w}" for p, w in many))
    print(f"public parameters typed Any: {any_params}")
    print(f"imports inside functions outside cli/: {inner_imports}")
    print(f"functions that resolve a patch order: {len(resolvers)}" + "".join(f"\n  {r}" for r in resolvers))


if __name__ == "__main__":
    main()
