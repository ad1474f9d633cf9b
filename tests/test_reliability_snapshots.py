"""Issue 26, section 1: inputs that change while they are read.

Commands read a checkpoint in several passes (config, headers, tensors, tokenizer). Another process that
rewrites the student meanwhile (``build --force`` into its folder) must not make a command write members whose
tensors were read with the old header's offsets from the new file: the command reads one version, or stops with
exit 2 naming the file and writes nothing. The rewrites here are real: another process replaces the folder (as
``atomic_dir(force=True)`` does) or overwrites a file in place, at a chosen moment (a progress hook) or in a loop
while the command runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_kit import invoke, make_kit, no_temp_left
from tiny import perturb

from boomerang.errors import BoomerangError
from boomerang.family import ExportProgress, export_family
from boomerang.io.fastbuild import stream_build
from boomerang.io.loading import load_model
from boomerang.io.snapshot import ChangedWhileRead, Snapshot, reading, snapshot_of

ROOT = Path(__file__).resolve().parents[1]

# another process replaces a folder as `build --force` does (a new folder swapped in), or overwrites in place
REWRITER = """
import os, shutil, sys, time
from pathlib import Path
from boomerang.io.atomic import atomic_dir
target, mode, pause, sources = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
i = 0
while True:
    src = Path(sources[i % len(sources)])
    if mode == "replace":
        with atomic_dir(target, force=True) as tmp:
            for p in sorted(src.iterdir()):
                shutil.copy2(p, tmp / p.name)
    else:  # in place: the same files, their bytes overwritten
        for p in sorted(src.iterdir()):
            with open(Path(target) / p.name, "r+b" if (Path(target) / p.name).exists() else "wb") as f:
                f.write(p.read_bytes())
                f.truncate()
    i += 1
    if len(sys.argv) > 4 and pause < 0:
        break
    time.sleep(abs(pause))
"""


def rewrite(target: Path, source: Path, mode: str = "replace") -> None:
    """Rewrite ``target`` with ``source``'s files once, from another process, and wait for it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", REWRITER, str(target), mode, "-1", str(source)]
    subprocess.run(cmd, check=True, env=env, timeout=120)
    time.sleep(0.02)  # past the file system's timestamp granularity


def start_rewriting(target: Path, sources: list[Path], mode: str, pause: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", REWRITER, str(target), mode, str(pause), *map(str, sources)]
    return subprocess.Popen(cmd, env=env)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("kit"), archs=("llama",))


@pytest.fixture(scope="module")
def versions(kit, tmp_path_factory):
    """Two versions of the student (A: the kit's; B: the same shapes, other weights), saved alike."""
    _t, a = kit.pair("llama")
    b = tmp_path_factory.mktemp("versions") / "b"
    model = perturb(load_model(a), 0.5, seed=7)
    model.save_pretrained(b)
    for f in a.iterdir():
        if f.name.startswith(("tokenizer", "student_config")):
            shutil.copy2(f, b / f.name)
    assert (a / "model.safetensors").stat().st_size == (b / "model.safetensors").stat().st_size
    return a, b


@pytest.fixture
def student(versions, tmp_path):
    """A fresh copy of version A to be rewritten."""
    s = tmp_path / "student"
    shutil.copytree(versions[0], s)
    return s


def _changed(e: pytest.ExceptionInfo, folder: Path) -> None:
    msg = " ".join(str(e.value).split())
    assert "changed while this command was reading it" in msg and str(folder) in msg, msg


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("mode", ["replace", "in place"])
def test_build_stops_when_the_student_is_rewritten_while_it_is_read(
    kit, versions, student, tmp_path, fast, mode
):
    t, _ = kit.pair("llama")
    out = tmp_path / "out"
    done: list[int] = []

    def progress(nbytes: int) -> None:  # after the first tensor: the rest would come from the new file
        if not done:
            rewrite(student, versions[1], mode)
        done.append(nbytes)

    with pytest.raises(ChangedWhileRead) as e:
        stream_build(t, student, out, num_patched=2, progress=progress, fast=fast)
    _changed(e, student)
    assert len(done) > 1 and not out.exists() and no_temp_left(tmp_path)


class RewriteAfterFirstMember(ExportProgress):
    def __init__(self, target: Path, source: Path, mode: str = "replace"):
        self.target, self.source, self.mode, self.members = target, source, mode, 0

    def member(self, k: int, name: str) -> None:
        self.members += 1
        if self.members == 2:
            rewrite(self.target, self.source, self.mode)


@pytest.mark.parametrize("stream", [True, False])
def test_family_stops_when_the_student_is_rewritten_between_members(kit, versions, student, tmp_path, stream):
    t, _ = kit.pair("llama")
    out = tmp_path / "fam"
    progress = RewriteAfterFirstMember(student, versions[1])
    with pytest.raises(ChangedWhileRead) as e:
        export_family(t, student, out, stream=stream, progress=progress)
    _changed(e, student)
    assert progress.members >= 2 and not out.exists() and no_temp_left(tmp_path)


def test_sweep_stops_when_the_student_is_rewritten_between_validation_and_loading(
    kit, versions, student, tmp_path
):
    from boomerang.evaluate.perplexity import EvalSpec
    from boomerang.pipelines.sweep import Sweep

    t, _ = kit.pair("llama")
    out = tmp_path / "sweep"
    spec = EvalSpec(context=16, max_tokens=32)
    job = Sweep(t, student, str(kit.corpus), out, sizes=[0, 5], spec=spec)  # configs and layer map read
    rewrite(student, versions[1])
    with pytest.raises(ChangedWhileRead) as e:
        job.run()
    _changed(e, student)
    assert not out.exists()


def test_a_scope_shares_one_version_and_a_held_file_reads_it(versions, student):
    a, b = versions
    with reading():
        first = snapshot_of(student)
        assert snapshot_of(student) is first
        old = first.read_bytes("model.safetensors")
        rewrite(student, b)
        # the held file still reads version A, though the path now names B
        assert first.read_bytes("model.safetensors") == old == (a / "model.safetensors").read_bytes()
        assert (student / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
        with pytest.raises(ChangedWhileRead):
            first.verify()
    Snapshot(student).verify()  # a new snapshot is of B, unchanged since


def test_a_checkpoint_left_alone_verifies(student):
    snap = Snapshot(student)
    snap.verify()
    (student / "extra.txt").write_text("x")
    with pytest.raises(ChangedWhileRead, match="it appeared"):
        snap.verify()


# ---- the CLI against a real concurrent writer -----------------------------------------------------------------


def _members(out: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted(out.glob("K*/model.safetensors"))}


def test_family_and_build_under_a_concurrent_writer_are_consistent_or_refused(
    kit, versions, student, tmp_path
):
    """While another process rewrites the student over and over (A, B, A, ... as `build --force` does), every
    family export and build either exits 2 naming the student and writes nothing, or exits 0 with output wholly
    from A or wholly from B."""
    t, _ = kit.pair("llama")
    refs = []
    for i, v in enumerate(versions):
        fam, one = tmp_path / f"ref-fam-{i}", tmp_path / f"ref-build-{i}"
        assert invoke(["family", "--teacher", str(t), "--student", str(v), "--out", str(fam)]).code == 0
        assert (
            invoke(["build", "--teacher", str(t), "--student", str(v), "-k", "2", "--out", str(one)]).code
            == 0
        )
        refs.append((_members(fam), (one / "model.safetensors").read_bytes()))
    assert refs[0][0] != refs[1][0]
    writer = start_rewriting(student, list(versions), "replace", pause=0.15)
    outcomes = []
    try:
        for i in range(6):
            fam, one = tmp_path / f"fam{i}", tmp_path / f"build{i}"
            r = invoke(["family", "--teacher", str(t), "--student", str(student), "--out", str(fam)])
            outcomes.append(("family", r.code))
            assert not r.crashed, r.traceback
            if r.code == 0:
                assert _members(fam) in (refs[0][0], refs[1][0])  # never a mix, never garbage
            else:
                assert r.explained and not fam.exists()
            r = invoke(
                ["build", "--teacher", str(t), "--student", str(student), "-k", "2", "--out", str(one)]
            )
            outcomes.append(("build", r.code))
            assert not r.crashed, r.traceback
            if r.code == 0:
                assert (one / "model.safetensors").read_bytes() in (refs[0][1], refs[1][1])
            else:
                assert r.explained and not one.exists()
    finally:
        writer.kill()
        writer.wait()
    assert no_temp_left(tmp_path)
    assert any(code == 2 for _, code in outcomes), outcomes  # the writer did get in the way


def test_a_reader_thread_and_a_writer_never_yield_a_mixed_model(versions, student):
    """load_model under a concurrent writer: a model wholly from A or from B, or a clear stop."""
    a, b = versions
    ref = {name: p.detach().clone() for name, p in load_model(a).named_parameters()}
    ref_b = {name: p.detach().clone() for name, p in load_model(b).named_parameters()}
    writer = start_rewriting(student, [b, a], "replace", pause=0.05)
    got = []
    try:
        for _ in range(8):
            try:
                model = load_model(student)
            except BoomerangError as e:
                assert (
                    "changed while" in str(e) or "no such" in str(e).lower() or "does not exist" in str(e)
                ), e
                got.append("stopped")
                continue
            params = dict(model.named_parameters())
            same_a = all(torch.equal(params[n], ref[n]) for n in ref)
            same_b = all(torch.equal(params[n], ref_b[n]) for n in ref_b)
            assert same_a or same_b
            got.append("a" if same_a else "b")
    finally:
        writer.kill()
        writer.wait()
    assert got
