"""Issue 13, defect classes 1 (write errors), 3 (concurrency) and 4 (orphans, resume): the one output path writes
atomically, never replaces without --force, lets exactly one of two concurrent writers win, turns write errors into
exit 2 with nothing left behind, removes dead runs' temporaries and lets ``family`` resume member by member."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from reliability_kit import invoke, make_kit, no_temp_left

from boomerang.errors import BoomerangError
from boomerang.io.atomic import (
    atomic_dir,
    atomic_write_text,
    check_writable,
    clean_orphans,
    owner_alive,
    rename_noreplace,
)

TESTS = Path(__file__).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("kit"), archs=("llama",))


def _python(code: str, *, fsize: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (optionally under a file-size limit, like ``ulimit -f``)."""

    def limit() -> None:
        if fsize is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-c", code],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


def _cli(argv: list[str]) -> str:
    return f"import sys\nfrom boomerang.cli.app import run\nsys.exit(run({argv!r}))\n"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---- the atomic primitives --------------------------------------------------------------------------------------


def test_never_replaces_without_force(tmp_path):
    out = tmp_path / "o"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    refused = pytest.raises(BoomerangError, match=r"already exists; pass --force \(force=True in Python\)")
    with refused, atomic_dir(out):
        pass
    with atomic_dir(out, force=True) as tmp:
        (tmp / "a").write_text("2")
    assert (out / "a").read_text() == "2" and no_temp_left(tmp_path)


def test_an_output_appearing_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(BoomerangError, match="appeared while this command ran"), atomic_dir(out) as tmp:
        (tmp / "mine").write_text("x")
        out.mkdir()
        (out / "theirs").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["theirs"] and no_temp_left(tmp_path)
    (tmp_path / "new").mkdir()
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "new", out)
    (tmp_path / "new").rmdir()
    atomic_write_text(tmp_path / "f.json", "1")
    with pytest.raises(BoomerangError, match="already exists"):
        atomic_write_text(tmp_path / "f.json", "2", force=False)
    assert (tmp_path / "f.json").read_text() == "1" and no_temp_left(tmp_path)


@pytest.mark.parametrize("where", ["file/sub", "/sys/boomerang-x", "/proc/boomerang-x"])
def test_unwritable_places_are_refused_up_front(tmp_path, where):
    (tmp_path / "file").write_text("x")
    out = tmp_path / where if not where.startswith("/") else Path(where)
    with pytest.raises(BoomerangError, match="cannot write"):
        check_writable(out, force=False)


def test_orphans_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    from boomerang.io.atomic import _stamp

    dead = _dead_pid()
    orphan = tmp_path / f".o.tmp-{dead}-1-abc"
    live = tmp_path / f".o.tmp-{os.getppid()}-{_stamp()}-abc"  # our parent: alive, started before now
    orphan.mkdir()
    (orphan / "x").write_text("half-written")
    assert not owner_alive(dead, 10**18)
    # a pid reused by a process started after the temporary directory was made is not its owner
    assert not owner_alive(os.getpid(), 0)
    assert owner_alive(os.getpid(), 10**19)
    clean_orphans(tmp_path)
    assert not orphan.exists()
    live.mkdir()
    clean_orphans(tmp_path, "o")
    assert live.exists()
    # a temporary of this process that it is not writing any more (left by an exception) is an orphan too
    mine = tmp_path / f".o.tmp-{os.getpid()}-{_stamp()}-abc"
    mine.mkdir()
    clean_orphans(tmp_path, "o")
    assert not mine.exists() and live.exists()


def test_a_second_writer_stops_while_the_first_writes(tmp_path):
    """The first writer to start wins; the second stops before renaming anything."""
    out = tmp_path / "o"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, time
                from boomerang.io.atomic import atomic_dir
                with atomic_dir({str(out)!r}) as tmp:
                    (tmp / "first").write_text("1")
                    print("inside", flush=True)
                    sys.stdin.readline()
            """),
        ],
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "inside"
        stopped = pytest.raises(BoomerangError, match=f"another process \\(pid {holder.pid}\\) is writing")
        with stopped, atomic_dir(out, force=True) as tmp:
            (tmp / "second").write_text("2")
    finally:
        holder.communicate("go\n", timeout=60)
    assert holder.returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["first"] and no_temp_left(tmp_path)


# ---- the commands -----------------------------------------------------------------------------------------------


def test_two_concurrent_builds_exactly_one_wins(kit, tmp_path):
    """Class 3: two processes build to one --out at the same moment: one exits 0, the other 2, never both 0."""
    t, s = kit.pair()
    for trial in range(3):
        out = tmp_path / f"o{trial}"
        argv = ["build", "--teacher", str(t), "--student", str(s), "-k", "2", "--out", str(out)]
        go = tmp_path / f"go{trial}"
        code = f"""
            import sys, time
            from pathlib import Path
            from boomerang.cli.app import run
            import boomerang.io.fastbuild  # imports done before the start line
            while not Path({str(go)!r}).exists():
                time.sleep(0.001)
            sys.exit(run({argv!r}))
        """
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(code)],
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        go.write_text("go")
        results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
        codes = sorted(r[2] for r in results)
        assert codes == [0, 2], results
        loser = next(r for r in results if r[2] == 2)
        assert "Traceback" not in loser[1] and "error:" in loser[1]
        assert any(m in loser[1] for m in ("already exists", "is writing", "appeared while"))
        assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
        assert no_temp_left(tmp_path)


@pytest.mark.parametrize(
    "command",
    [
        ["build", "--teacher", "{T}", "--student", "{S}", "-k", "2"],
        ["build", "--teacher", "{T}", "--student", "{S}", "-k", "2", "--no-stream"],
        ["family", "--teacher", "{T}", "--student", "{S}", "--sizes", "0,5"],
        ["init", "--teacher", "{T}"],
        ["prune", "--teacher", "{T}", "-n", "4"],
    ],
    ids=lambda c: "-".join(a for a in c if not a.startswith("{"))[:40],
)
def test_write_errors_exit_2_and_leave_nothing(kit, tmp_path, command):
    """Class 1: a write error (here the file-size limit, as ``ulimit -f`` sets it) is exit 2 with a message."""
    t, s = kit.pair()
    out = tmp_path / "out"
    argv = [a.replace("{T}", str(t)).replace("{S}", str(s)) for a in command] + ["--out", str(out)]
    r = _python(_cli(argv), fsize=40_000)  # the tiny models' weights are larger
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "error:" in r.stderr
    assert "writing" in r.stderr and "failed" in r.stderr and "ulimit -f" in " ".join(r.stderr.split())
    assert not out.exists() and no_temp_left(tmp_path)


def test_distill_write_error_exits_2(kit, tmp_path):
    out = tmp_path / "run"
    r = _python(_cli(["distill", str(kit.root / "recipe.yaml"), "--out", str(out)]), fsize=40_000)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "error:" in r.stderr
    assert not (out / "student").exists() and (not out.exists() or no_temp_left(out))


def test_killed_build_leaves_an_orphan_the_next_run_removes(kit, tmp_path):
    """Class 4: SIGKILL mid-write leaves ``.out.tmp-PID-*``; the next run of the command removes it."""
    t, s = kit.pair()
    out = tmp_path / "out"
    argv = ["build", "--teacher", str(t), "--student", str(s), "-k", "2", "--out", str(out)]
    code = """
        import os, signal
        import boomerang.io.safetensors_files as st
        real = st.write_safetensors
        def write_then_die(*a, **k):
            real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        st.write_safetensors = write_then_die
    """
    r = _python(textwrap.dedent(code) + _cli(argv))
    assert r.returncode == -signal.SIGKILL
    assert not out.exists() and not no_temp_left(tmp_path)  # the orphan
    assert invoke(argv).code == 0
    assert (out / "model.safetensors").is_file() and no_temp_left(tmp_path)


def test_distill_removes_its_dead_temporaries(kit, tmp_path):
    out = tmp_path / "run"
    recipe = str(kit.root / "recipe.yaml")
    assert invoke(["distill", recipe, "--out", str(out), "checkpoint.every=1"]).code == 0
    dead = _dead_pid()
    orphans = [out / f".student.tmp-{dead}-1-aaa", out / "checkpoints" / f".step-0000001.tmp-{dead}-1-bbb"]
    for o in orphans:
        o.mkdir(parents=True)
    r = invoke(["distill", recipe, "--out", str(out), "checkpoint.every=1", "--resume"])
    assert r.code == 0, r.err
    assert not any(o.exists() for o in orphans)


def _family_files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("stream", [True, False])
def test_family_resumes_member_by_member_after_a_kill(kit, tmp_path, stream):
    """Class 4: a family export killed after two members keeps them; the rerun writes only the other four and the
    result is byte-identical to an uninterrupted export."""
    t, s = kit.pair()
    out, fresh = tmp_path / "fam", tmp_path / "fresh"
    flag = "--stream" if stream else "--no-stream"
    argv = ["family", "--teacher", str(t), "--student", str(s), flag, "--out", str(out)]
    code = """
        import os, signal
        import boomerang.family as fam
        for cls in (fam._StreamWriter, fam._MemoryWriter):
            def make(real):
                def write(self, *a, **k):
                    if getattr(fam, "_written", 0) == 2:
                        os.kill(os.getpid(), signal.SIGKILL)
                    fam._written = getattr(fam, "_written", 0) + 1
                    return real(self, *a, **k)
                return write
            cls.write = make(cls.write)
    """
    assert _python(textwrap.dedent(code) + _cli(argv)).returncode == -signal.SIGKILL
    assert not out.exists()
    import boomerang.family as fam

    calls: list[str] = []
    writer = fam._StreamWriter if stream else fam._MemoryWriter
    real = writer.write

    def counting(self, plan, directory, *a, **k):
        calls.append(directory.name)
        return real(self, plan, directory, *a, **k)

    writer.write = counting
    try:
        r = invoke(argv)
    finally:
        writer.write = real
    assert r.code == 0, r.err
    assert len(calls) == 4 and "interrupted run" in r.out  # two members kept, four written
    assert invoke(["family", "--teacher", str(t), "--student", str(s), flag, "--out", str(fresh)]).code == 0
    a, b = _family_files(out), _family_files(fresh)
    assert a.keys() == b.keys() and len(a) > 6
    assert [k for k in a if a[k] != b[k]] == []
    assert json.loads(a["family.json"])["members"][0]["K"] == 0
    assert no_temp_left(tmp_path)


def test_family_does_not_resume_a_different_export(kit, tmp_path):
    """A killed export of other sizes is discarded, not mixed in."""
    t, s = kit.pair()
    out = tmp_path / "fam"
    base = ["family", "--teacher", str(t), "--student", str(s), "--out", str(out)]
    code = """
        import os, signal
        import boomerang.family as fam
        real = fam._StreamWriter.write
        def write(self, *a, **k):
            real(self, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        fam._StreamWriter.write = write
    """
    assert _python(textwrap.dedent(code) + _cli([*base, "--sizes", "0,1"])).returncode == -signal.SIGKILL
    r = invoke([*base, "--sizes", "2,3"])
    assert r.code == 0 and "interrupted run" not in r.out
    assert sorted(p.name[:3] for p in out.iterdir() if p.is_dir()) == ["K02", "K03"]
    assert no_temp_left(tmp_path)
