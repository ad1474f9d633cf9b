"""The distillation trainer on tiny models: learning, frozen teacher, accumulation, resume, robustness."""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_corpus, tiny_recipe, tiny_run_setup
from transformers import AutoModelForCausalLM

from boomerang.cli.app import run
from boomerang.core.layermap import LayerMap
from boomerang.errors import BoomerangError
from boomerang.io.sidecar import read_layer_map
from boomerang.train.initialise import init_student, save_student
from boomerang.train.recipe import parse_recipe
from boomerang.train.trainer import PAUSE_ENV, Distiller, distill, list_checkpoints


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()  # train.threads (set by tiny recipes) must not leak into other tests
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tiny_run_setup(tmp_path_factory.mktemp("distill"))


BF16_TOLERANCE = 0.02  # max relative loss difference between a bf16 and an fp32 run, step by step


def _records(out: Path, kind=None):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == kind]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_a_30_step_run_lowers_the_loss_and_writes_a_standard_student(root, tmp_path):
    teacher_before = _weights(root / "teacher")
    recipe = parse_recipe(
        tiny_recipe(
            root,
            train={"steps": 30},
            eval={"every": 10, "blocks": 8},
            checkpoint={"every": 10},
            log={"tensorboard": None},  # on when installed
        )
    )
    out = tmp_path / "run"
    summary = distill(recipe, out=out)
    train = _records(out)
    assert [r["step"] for r in train] == list(range(1, 31))
    first = sum(r["loss"] for r in train[:5]) / 5
    last = sum(r["loss"] for r in train[-5:]) / 5
    assert last < first - 0.3, (first, last)
    evals = [r for r in _records(out, "eval") if r["model"] == "student"]
    assert [r["step"] for r in evals] == [10, 20, 30] and evals[-1]["loss"] < evals[0]["loss"]
    assert summary["steps"] == 30 and summary["tokens"] == 30 * 8 * 16 and summary["val_teacher"]["ppl"] > 1
    assert summary["val_slice"] == {
        "source": str(root / "val"),
        "from": "start",
        "blocks": 8,
        "seq_len": 16,
        "tokens": 128,
        "layout": "packed",
    }
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"step-0000010", "step-0000020"}
    # the final student is a standard checkpoint carrying its layer map, sidecar and tokenizer
    student_dir = out / "student"
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    assert model.config.num_hidden_layers == 4 and model.config.tie_word_embeddings
    assert model.config.boomerang["layer_map"] == {"n_teacher": 6, "kept": [0, 2, 4, 5]}
    assert model.config.boomerang["distill"]["steps"] == 30
    assert read_layer_map(student_dir) == LayerMap.from_kept([0, 2, 4, 5], 6)
    assert json.loads((student_dir / "student_config.json").read_text())["copied_teacher_layers"] == [
        0,
        2,
        4,
        5,
    ]
    assert (student_dir / "tokenizer.json").is_file() and (out / "recipe.yaml").is_file()
    if importlib.util.find_spec("tensorboard") is not None:
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # the teacher on disk is untouched
    after = _weights(root / "teacher")
    assert all(torch.equal(teacher_before[k], after[k]) for k in teacher_before)


def test_checkpoints_keep_last_k_progress_summary_and_tensorboard(root, tmp_path, monkeypatch):
    import io
    import re

    from rich.console import Console

    import boomerang.ui as common

    err = Console(file=io.StringIO(), force_terminal=True, width=240, record=True)
    out_console = Console(file=io.StringIO(), width=240, record=True)
    monkeypatch.setattr(common, "err_console", err)
    monkeypatch.setattr(common, "console", out_console)
    tb = importlib.util.find_spec("tensorboard") is not None
    recipe = parse_recipe(
        tiny_recipe(
            root,
            train={"steps": 6},
            checkpoint={"every": 1, "keep": 2},
            eval={"every": 3, "blocks": 4},
            log={"progress": True, "tensorboard": tb},
        )
    )
    out = tmp_path / "run"
    summary = distill(recipe, out=out)
    # a checkpoint after steps 1..5 (not after the last step); only the last two survive, no temporaries left
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000004", "step-0000005"]
    files = {"model.safetensors", "optimizer.safetensors", "scheduler.json", "rng.safetensors", "state.json"}
    for c in ckpts.iterdir():
        assert files <= {f.name for f in c.iterdir()}
        assert json.loads((c / "state.json").read_text())["step"] == int(c.name.split("-")[1])
    # an interrupted write (a temporary directory, or a step directory without state.json) is never resumed from
    (ckpts / ".step-0000006.tmp-x").mkdir()
    (ckpts / "step-0000009").mkdir()
    assert [p.name for p in list_checkpoints(out)] == ["step-0000004", "step-0000005"]
    # the progress bar shows every loss term, tokens/s and the ETA
    bar = [line for line in err.export_text().splitlines() if line.startswith("distill")][-1]
    for term in ("loss", "ce", "kl", "cos"):
        assert re.search(rf"\b{term} [-0-9.e]+", bar), bar
    assert re.search(r"[0-9,]+ tok/s", bar) and re.search(r"\d+:\d\d:\d\d", bar) and "6/6" in bar, bar
    # the final summary is printed and written
    printed = out_console.export_text()
    assert "distillation summary" in printed and "steps / tokens" in printed and "6 / 768" in printed
    assert "validation (student)" in printed and "validation (teacher)" in printed
    assert json.loads((out / "summary.json").read_text()) == summary and summary["skipped_steps"] == 0
    # metrics: one JSONL record per step, plus TensorBoard scalars when it is installed
    assert [r["step"] for r in _records(out)] == list(range(1, 7))
    assert all({"loss", "ce", "kl", "cos", "lr", "grad_norm", "tok_s"} <= r.keys() for r in _records(out))
    if tb:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        ea = EventAccumulator(str(out / "tensorboard"))
        ea.Reload()
        tags = set(ea.Tags()["scalars"])
        assert {"train/loss", "train/ce", "train/kl", "train/cos", "train/tok_s", "eval/loss"} <= tags
        assert [e.step for e in ea.Scalars("train/loss")] == list(range(1, 7))


def test_only_student_parameters_get_gradients(root, tmp_path):
    d = Distiller(parse_recipe(tiny_recipe(root)), out=tmp_path / "run")
    d.setup()
    t_before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in d.student.state_dict().items()}
    d.train_step()
    assert not any(p.requires_grad for p in d.teacher.parameters())
    assert all(p.grad is None for p in d.teacher.parameters())
    assert not d.teacher.training and d.student.training
    assert all(torch.equal(t_before[k], v) for k, v in d.teacher.state_dict().items())
    changed = [k for k, v in d.student.state_dict().items() if not torch.equal(s_before[k], v)]
    assert len(changed) == len(s_before)  # every student tensor moved
    teacher_ids = {id(p) for p in d.teacher.parameters()}
    opt_ids = {id(p) for g in d.optimizer.param_groups for p in g["params"]}
    assert not opt_ids & teacher_ids and opt_ids == {id(p) for p in d.student.parameters()}
    assert all(id(p) not in teacher_ids for p in d.student.parameters())  # the student owns its tensors


def test_gradient_accumulation_gives_the_same_updates(root, tmp_path):
    def losses(micro):
        r = parse_recipe(tiny_recipe(root, train={"micro_batch_size": micro, "steps": 3}))
        d = Distiller(r, out=tmp_path / f"m{micro}")
        d.setup()
        curve = [d.train_step()["loss"] for _ in range(3)]
        return curve, {k: v.clone() for k, v in d.student.state_dict().items()}

    a, wa = losses(1)  # 8 micro-batches of 1
    b, wb = losses(8)  # 1 micro-batch of 8
    assert a == pytest.approx(b, abs=1e-5)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_fused_head_and_full_logits_paths_agree(root, tmp_path):
    curves = []
    for fused in (True, False):
        r = parse_recipe(tiny_recipe(root, train={"fused_loss": fused, "steps": 3}))
        d = Distiller(r, out=tmp_path / str(fused))
        d.setup()
        assert d.mode == ("head" if fused else "logits")
        curves.append([d.train_step()["loss"] for _ in range(3)])
    assert curves[0] == pytest.approx(curves[1], abs=1e-5)


def test_gradient_checkpointing_gives_the_same_updates(root, tmp_path):
    curves = []
    for gc in (False, True):
        r = parse_recipe(tiny_recipe(root, train={"gradient_checkpointing": gc, "steps": 3}))
        d = Distiller(r, out=tmp_path / str(gc))
        d.setup()
        assert d.student.is_gradient_checkpointing == gc
        curves.append([d.train_step()["loss"] for _ in range(3)])
    assert curves[0] == pytest.approx(curves[1], abs=1e-5)


def test_padded_documents_train_on_real_tokens_only(root, tmp_path):
    r = parse_recipe(tiny_recipe(root, data={"packing": False, "seq_len": 64}, train={"steps": 2}))
    d = Distiller(r, out=tmp_path / "run")
    d.setup()
    assert d.train_data.blocks.mask is not None
    rec = d.train_step()
    batch_tokens = int(d.train_data.blocks.batch(d.train_data.indices(0, 8)).attention_mask.sum())
    assert rec["tokens"] == batch_tokens < 8 * 64  # documents are 20-120 words: some padding
    assert all(v == v for v in (rec["loss"], rec["ce"], rec["kl"], rec["cos"]))  # finite, no NaN from padding


def test_freezing_and_untying(root, tmp_path):
    r = parse_recipe(tiny_recipe(root, train={"untie_head": True, "freeze_embeddings": True, "steps": 2}))
    d = Distiller(r, out=tmp_path / "run")
    d.setup()
    emb, head = d.student.get_input_embeddings().weight, d.student.get_output_embeddings().weight
    assert emb is not head and not emb.requires_grad and head.requires_grad
    e0, h0 = emb.detach().clone(), head.detach().clone()
    d.train_step()
    assert torch.equal(emb, e0) and not torch.equal(head, h0)
    # tied + freeze_head freezes the shared matrix (one tensor)
    r = parse_recipe(tiny_recipe(root, train={"freeze_head": True, "freeze_final_norm": True}))
    d = Distiller(r, out=tmp_path / "run2")
    d.setup()
    assert d.student.get_input_embeddings().weight is d.student.get_output_embeddings().weight
    assert not d.student.get_input_embeddings().weight.requires_grad
    assert not d.student.model.norm.weight.requires_grad and d.frozen == ["LM head", "final norm"]


def test_frozen_student_layers_keep_their_weights(root, tmp_path):
    r = parse_recipe(tiny_recipe(root, train={"freeze_layers": [2, 0], "freeze_final_norm": True}))
    d = Distiller(r, out=tmp_path / "two")
    d.setup()
    assert d.frozen == ["final norm", "layers 0, 2"]
    r = parse_recipe(tiny_recipe(root, train={"freeze_layers": [1], "steps": 2}))
    d = Distiller(r, out=tmp_path / "run")
    d.setup()
    assert d.frozen == ["layer 1"]
    before = {k: v.detach().clone() for k, v in d.student.named_parameters()}
    d.train_step()
    after = dict(d.student.named_parameters())
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".layers.1." not in k for k in moved)
    assert all(not after[k].requires_grad for k in after if ".layers.1." in k)
    with pytest.raises(BoomerangError, match=r"freeze_layers names student layers \[7\]"):
        Distiller(parse_recipe(tiny_recipe(root, train={"freeze_layers": [7]})), out=tmp_path / "bad").setup()
    with pytest.raises(BoomerangError, match="indices are 0"):
        parse_recipe(tiny_recipe(root, train={"freeze_layers": [-1]}))


def test_freezing_a_random_untrained_student_is_refused(root, tmp_path, capsys):
    """Frozen parts of a random-init student would stay random: refused before training (recipe init, a saved
    student on the command line, and the library), accepted once the student has been distilled."""
    import yaml

    with pytest.raises(BoomerangError, match=r"train\.freeze_embeddings=false"):
        parse_recipe(tiny_recipe(root, init={"strategy": "random"}, train={"freeze_embeddings": True}))
    parse_recipe(tiny_recipe(root, init={"strategy": "random"}))  # nothing frozen: fine
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher")
    student = tmp_path / "random"
    save_student(init_student(teacher, "random"), student)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(root, student=str(student))))
    out = tmp_path / "out"
    assert run(["distill", str(recipe), "--out", str(out), "train.freeze_layers=[0]"]) == 2
    err = capsys.readouterr().err
    assert "random" in err and "train.freeze_layers=[]" in err and not out.exists()
    r = parse_recipe(tiny_recipe(root, student=str(student), train={"freeze_final_norm": True}))
    with pytest.raises(BoomerangError, match=r"train\.freeze_final_norm=false"):
        Distiller(r, out=tmp_path / "lib").setup()
    assert (
        run(
            [
                "distill",
                str(recipe),
                "--out",
                str(out),
                "train.freeze_layers=[9]",
                "train.freeze_embeddings=false",
            ]
        )
        == 2
    )
    assert "has layers 0..3" in capsys.readouterr().err and not out.exists()
    config = json.loads((student / "config.json").read_text())
    config["boomerang"]["distill"] = {"steps": 1}
    (student / "config.json").write_text(json.dumps(config))
    Distiller(r, out=tmp_path / "trained").setup()  # a distilled random-init student may be frozen in part


def test_untied_student_saves_untied(root, tmp_path):
    r = parse_recipe(tiny_recipe(root, train={"untie_head": True, "steps": 2}))
    distill(r, out=tmp_path / "run")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "student")
    assert not model.config.tie_word_embeddings
    assert not torch.equal(model.get_input_embeddings().weight, model.get_output_embeddings().weight)


def test_ce_only_ablation_needs_no_teacher_forward(root, tmp_path):
    r = parse_recipe(tiny_recipe(root, loss={"kl": 0, "cos": 0}, eval={"blocks": 0}))
    d = Distiller(r, out=tmp_path / "run")
    d.setup()
    assert d.t_mod is None
    rec = d.train_step()
    assert rec["kl"] == 0 and rec["cos"] == 0 and rec["loss"] == pytest.approx(rec["ce"])


def test_bf16_autocast_path_runs_on_cpu(root, tmp_path):
    r = parse_recipe(tiny_recipe(root, train={"precision": "bf16", "steps": 2}))
    d = Distiller(r, out=tmp_path / "run")
    d.setup()
    assert d.teacher.dtype == torch.bfloat16 and d.student.dtype == torch.float32
    rec = d.train_step()
    assert torch.isfinite(torch.tensor(rec["loss"])) and rec["loss"] > 0


@pytest.mark.parametrize("copies", [True, False], ids=["bf16-copies", "autocast"])
def test_bf16_tracks_fp32_over_50_steps(root, tmp_path, copies):
    """The bf16 step (bf16 teacher, bf16 working copies of the student or autocast, bf16 head matmuls) follows
    the fp32 run's loss curve."""
    curves = {}
    for precision in ("fp32", "bf16"):
        train = {"precision": precision, "steps": 50, "bf16_copies": copies}
        d = Distiller(parse_recipe(tiny_recipe(root, train=train)), out=tmp_path / precision)
        d.setup()
        assert (d.models.working is not None) == (copies and precision == "bf16")
        curves[precision] = [d.train_step()["loss"] for _ in range(50)]
    a, b = torch.tensor(curves["fp32"]), torch.tensor(curves["bf16"])
    rel = (a - b).abs() / a
    print(
        f"bf16 ({'copies' if copies else 'autocast'}) vs fp32 over 50 steps: max relative difference {rel.max():.4f}"
    )
    assert rel.max() < BF16_TOLERANCE, rel.max()
    assert b[-5:].mean() < 0.9 * b[:5].mean()  # and it learns


def test_bf16_working_copies_equal_the_masters_rounded(root, tmp_path):
    """After every step the bf16 copies are the fp32 master weights rounded to bf16; the embedding and head are
    the masters themselves (fp32 token gradients); only the masters get gradients and optimizer state."""
    r = parse_recipe(tiny_recipe(root, train={"precision": "bf16", "steps": 4}))
    d = Distiller(r, out=tmp_path / "run")
    d.setup()
    wc = d.models.working
    assert wc is not None and wc.pairs
    emb = d.student.get_input_embeddings().weight
    assert wc.model.get_input_embeddings().weight is emb and emb.dtype == torch.float32
    assert all(mp.dtype == torch.float32 and wp.dtype == torch.bfloat16 for mp, wp in wc.pairs)
    before = {id(mp): mp.detach().clone() for mp, _ in wc.pairs}
    for _ in range(3):
        d.train_step()
        for mp, wp in wc.pairs:
            assert torch.equal(wp.detach(), mp.detach().to(torch.bfloat16))
            assert wp.grad is None  # drained into the masters' gradients, which the optimizer then consumed
    assert any(not torch.equal(before[id(mp)], mp.detach()) for mp, _ in wc.pairs)  # the masters moved
    opt_params = {id(p) for g in d.optimizer.param_groups for p in g["params"]}
    assert all(id(mp) in opt_params and id(wp) not in opt_params for mp, wp in wc.pairs)


def test_bf16_working_copy_gradients_match_autocast(root, tmp_path):
    """One backward pass through the working copy gives (nearly) the gradients the autocast path gives."""
    grads = {}
    for copies in (True, False):
        r = parse_recipe(tiny_recipe(root, train={"precision": "bf16", "steps": 2, "bf16_copies": copies}))
        d = Distiller(r, out=tmp_path / str(copies))
        d.setup()
        d.optimizer.step = lambda: None  # keep the gradients for inspection
        d.optimizer.zero_grad = lambda set_to_none=True: None
        d.train_step()
        grads[copies] = {n: p.grad.clone() for n, p in d.student.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name, g in grads[True].items():
        ref = grads[False][name]
        cos = torch.nn.functional.cosine_similarity(g.flatten(), ref.flatten(), dim=0)
        assert cos > 0.98, (name, float(cos))


def test_compiled_layers_give_the_same_losses(root, tmp_path):
    """train.compile (torch.compile of every layer, inductor on CPU) changes speed, not the loss curve."""
    curves = {}
    for compiled in (False, True):
        train = {"precision": "bf16", "steps": 6, "compile": compiled}
        d = Distiller(parse_recipe(tiny_recipe(root, train=train)), out=tmp_path / str(compiled))
        d.setup()
        curves[compiled] = torch.tensor([d.train_step()["loss"] for _ in range(6)])
    rel = ((curves[True] - curves[False]).abs() / curves[False]).max()
    assert rel < 0.01, rel


def test_auto_precision_is_decided_once_per_run_and_kept_on_resume(root, tmp_path, monkeypatch):
    import boomerang.train.precision as prec

    monkeypatch.setattr(prec, "native_bf16", lambda: ["avx512_bf16"])
    monkeypatch.setattr(prec, "bf16_speedup", lambda: 2.0)  # the measurement at the start: bf16
    r = parse_recipe(tiny_recipe(root, train={"precision": "auto", "steps": 4}, checkpoint={"every": 2}))
    d = Distiller(r, out=tmp_path / "run")
    d.setup()
    assert d.precision == "bf16"
    d.train_step()
    d.state.step = 2
    d._save_checkpoint()
    state = json.loads((list_checkpoints(tmp_path / "run")[-1] / "state.json").read_text())
    assert state["precision"] == "bf16"
    # a later measurement says fp32 (other work on the machine): the resumed run keeps bf16 ...
    monkeypatch.setattr(prec, "bf16_speedup", lambda: 1.1)
    resumed = Distiller(r, out=tmp_path / "run", resume=True)
    resumed.setup()
    assert resumed.precision == "bf16" and "as this run started" in resumed.precision_choice.reason
    # ... and a new run measures again
    fresh = Distiller(r, out=tmp_path / "new")
    fresh.setup()
    assert fresh.precision == "fp32"


def test_bf16_student_is_saved_in_the_teachers_dtype(root, tmp_path):
    out = tmp_path / "run"
    distill(parse_recipe(tiny_recipe(root, train={"precision": "bf16", "steps": 2})), out=out)
    assert json.loads((out / "student" / "config.json").read_text())["dtype"] == "float32"
    assert all(t.dtype == torch.float32 for t in _weights(out / "student").values())
    assert "bf16" in json.loads((out / "summary.json").read_text())["precision"]


def test_non_finite_steps_are_skipped_then_the_run_aborts(tmp_path):
    root = tiny_run_setup(tmp_path, tie=False)
    # a teacher whose embedding row for token w7 is NaN: blocks containing w7 give a NaN KL
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher")
    save_student(init_student(teacher), root / "student")  # a clean student
    with torch.no_grad():
        teacher.get_input_embeddings().weight[7] = float("nan")
    teacher.save_pretrained(root / "teacher")
    for i in range(40):  # most documents avoid w7; a few carry it
        text = (root / "train" / f"doc{i:03d}.txt").read_text().replace("w7 ", "w8 ")
        (root / "train" / f"doc{i:03d}.txt").write_text(("w7 " if i % 8 == 0 else "") + text)
    student = str(root / "student")
    r = parse_recipe(
        tiny_recipe(root, student=student, train={"steps": 12, "max_nonfinite": 100}, eval={"blocks": 0})
    )
    out = tmp_path / "run"
    summary = distill(r, out=out)
    recs = _records(out)
    skipped = [x for x in recs if x.get("skipped")]
    assert 0 < summary["skipped_steps"] == len(skipped) < 12
    assert all(x["loss"] is None for x in skipped)
    w = _weights(out / "student")
    assert all(torch.isfinite(t).all() for t in w.values())
    r = parse_recipe(
        tiny_recipe(root, student=student, train={"steps": 12, "max_nonfinite": 0}, eval={"blocks": 0})
    )
    with pytest.raises(BoomerangError, match=r"aborting at step \d+: 1 steps had a non-finite"):
        distill(r, out=tmp_path / "run2")


def test_run_directory_rules(root, tmp_path):
    r = parse_recipe(tiny_recipe(root, train={"steps": 2}))
    out = tmp_path / "run"
    distill(r, out=out)
    with pytest.raises(BoomerangError, match="already exists; pass --resume"):
        distill(r, out=out)
    distill(r, out=out, force=True)  # a run directory may be replaced
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(BoomerangError, match="not a boomerang run directory"):
        distill(r, out=other, force=True)
    assert (other / "notes.txt").read_text() == "keep"
    # resuming with different settings is refused
    r2 = parse_recipe(tiny_recipe(root, train={"steps": 4}, checkpoint={"every": 1}))
    distill(r2, out=tmp_path / "run3")
    changed = parse_recipe(tiny_recipe(root, train={"steps": 4}, optim={"lr": 1e-3}, checkpoint={"every": 1}))
    with pytest.raises(BoomerangError, match=r"differs .* in optim\.lr"):
        distill(changed, out=tmp_path / "run3", resume=True)


def _lrs(opt, sched, n):
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(
    "schedule,min_ratio", [("cosine", 0.0), ("cosine", 0.1), ("linear", 0.0), ("constant", 0.0)]
)
def test_lr_schedule_is_transformers_own(schedule, min_ratio):
    import transformers

    from boomerang.train.schedule import make_scheduler

    def opt():
        return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)

    ours = _lrs(o := opt(), make_scheduler(o, schedule, warmup=10, total=100, min_lr_ratio=min_ratio), 100)
    lib = {
        "cosine": lambda o: transformers.get_cosine_with_min_lr_schedule_with_warmup(
            o, 10, 100, min_lr_rate=min_ratio
        ),
        "linear": lambda o: transformers.get_linear_schedule_with_warmup(o, 10, 100),
        "constant": lambda o: transformers.get_constant_schedule_with_warmup(o, 10),
    }[schedule]
    o = opt()
    assert ours == _lrs(o, lib(o), 100)
    assert ours[0] == 0.0 and ours[10] == pytest.approx(3e-4)  # as the reference: the first step has lr 0
    if schedule == "cosine":
        assert ours[-1] == pytest.approx(
            3e-4 * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
        )


def test_min_lr_ratio_needs_cosine():
    from boomerang.train.schedule import make_scheduler

    o = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(BoomerangError, match="cosine schedule only"):
        make_scheduler(o, "linear", warmup=1, total=10, min_lr_ratio=0.1)


def test_logged_lr_follows_the_schedule(root, tmp_path):
    r = parse_recipe(tiny_recipe(root, train={"steps": 6}, optim={"warmup_ratio": 0.5, "lr": 1e-3}))
    d = Distiller(r, out=tmp_path / "run")
    d.setup()
    lrs = [d.train_step()["lr"] for _ in range(6)]
    assert lrs[0] == 0.0 and lrs[3] == pytest.approx(1e-3) and lrs[-1] < lrs[3]


def _cli(args, env=None, **kw):
    cmd = [sys.executable, "-c", "from boomerang.cli.app import main; main()", *args]
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, **kw)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, precision):
    # attention dropout makes the RNG state matter
    root = tiny_run_setup(tmp_path, attention_dropout=0.2)
    recipe = tmp_path / "r.yaml"
    import yaml

    train = {"steps": 10, "precision": precision}
    recipe.write_text(yaml.safe_dump(tiny_recipe(root, train=train, checkpoint={"every": 3, "keep": 2})))
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _cli(["distill", str(recipe), "--out", str(full)]).wait(timeout=300) == 0
    proc = _cli(["distill", str(recipe), "--out", str(killed)], env={PAUSE_ENV: "7"})
    try:
        deadline = time.time() + 300
        while not (killed / ".paused").exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "student").exists()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]
    assert _cli(["distill", str(recipe), "--out", str(killed), "--resume"]).wait(timeout=300) == 0
    a, b = _weights(full / "student"), _weights(killed / "student")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-exact
    steps = [r["step"] for r in _records(killed)]
    assert steps == list(range(1, 11))  # records after the checkpoint were replaced, not duplicated
    assert [r["loss"] for r in _records(killed)] == [r["loss"] for r in _records(full)]


def test_validation_perplexity_does_not_depend_on_the_ce_weight(root, tmp_path):
    """Validation perplexity is the student's CE on the validation blocks whatever ``loss.ce`` weighs (at ce=0 it
    once read 1.0); the step logs report the CE too."""
    got = {}
    for ce in (1.0, 0.0):
        d = Distiller(parse_recipe(tiny_recipe(root, loss={"ce": ce, "kl": 1.0})), out=tmp_path / str(ce))
        d.setup()
        got[ce] = d.evaluate()
        assert d.train_step()["ce"] > 0
    assert got[0.0]["ppl"] > 1.5
    assert got[0.0]["ppl"] == pytest.approx(got[1.0]["ppl"], rel=1e-6)  # the same student, untrained


def test_streaming_and_heldout_split(root, tmp_path):
    r = parse_recipe(
        tiny_recipe(
            root,
            data={"streaming": True, "eval": None, "heldout_docs": 3, "shuffle_buffer": 16},
            train={"steps": 3},
        )
    )
    summary = distill(r, out=tmp_path / "run")
    assert summary["steps"] == 3 and summary["val_student"]["tokens"] > 0


@pytest.mark.parametrize("data", [{"eval": None, "heldout_docs": 3}, {}], ids=["heldout", "eval-source"])
def test_validation_blocks_get_bos_like_training_blocks(root, tmp_path, data):
    """add_bos applies to validation text as to training text, streamed or not."""
    for streaming in (True, False):
        r = parse_recipe(
            tiny_recipe(root, data={"streaming": streaming, "add_bos": True, "shuffle_buffer": 16, **data})
        )
        d = Distiller(r, out=tmp_path / f"run-{streaming}")
        d.setup()
        bos = d.tokenizer.bos_token_id
        assert bos is not None
        assert int((d.eval_blocks.ids == bos).sum()) >= 1, streaming
        assert int((d.train_data.take(64).input_ids == bos).sum()) >= 1, streaming


def test_cli_distill_flags_and_bad_input(root, tmp_path, capsys):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(root)))
    assert run(["distill", str(recipe), "--dry-run", "--steps", "3", "loss.kl=0.5"]) == 0
    text = capsys.readouterr().out
    assert "steps: 3" in text and "kl: 0.5" in text
    assert run(["distill", str(recipe), "train.stepz=3"]) == 2
    assert "did you mean 'train.steps'" in capsys.readouterr().err
    assert run(["distill", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run(["distill", str(recipe), "--resume", "--force"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    assert run(["distill", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    empty_data = tmp_path / "short"
    tiny_corpus(empty_data, 1, words=(3, 4))
    assert run(["distill", str(recipe), "--out", str(tmp_path / "o"), f"data.train={empty_data}"]) == 2
    assert "shorter than one sequence" in capsys.readouterr().err
    assert run(["distill", str(recipe), "--out", str(tmp_path / "o2"), "--steps", "2"]) == 0
    assert (tmp_path / "o2" / "student" / "config.json").is_file()


@pytest.mark.real
def test_real_teacher_init_and_a_few_distill_steps(real_teacher_dir, corpora, tmp_path):
    """`boomerang init` on SmolLM2-135M, then three distillation steps on the shared corpus."""
    corpus = corpora / "validation"
    student = tmp_path / "student"
    assert run(["init", "--teacher", "smollm2-offline", "--out", str(student)]) == 0
    assert read_layer_map(student) == LayerMap.every(30)
    raw = {
        "teacher": "smollm2-offline",
        "student": str(student),
        "data": {
            "train": str(corpus),
            "seq_len": 32,
            "cache_dir": str(tmp_path / "cache"),
        },
        "train": {"batch_size": 2, "micro_batch_size": 1, "steps": 3, "threads": 1},
        "loss": {"align_embeddings": True, "align_final": "both"},
        "eval": {"blocks": 0},
        "log": {"progress": False, "tensorboard": False},
    }
    summary = distill(parse_recipe(raw), out=tmp_path / "run")
    recs = _records(tmp_path / "run")
    assert len(recs) == 3 and all(0 < r["loss"] < 20 and r["grad_norm"] > 0 for r in recs)
    assert 0 < recs[0]["cos"] < 17 and recs[0]["kl"] > 0  # 17 aligned pairs, each 1 - cos in [0, 2]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "student")
    assert model.config.num_hidden_layers == 16 and model.config.boomerang["distill"]["steps"] == 3
    assert summary["tokens"] == 3 * 2 * 32


@pytest.mark.parametrize(
    "init,kept",
    [
        ({"strategy": "layers", "layers": [0, 3, 5]}, [0, 3, 5]),
        ({"strategy": "random"}, [0, 2, 4, 5]),
        ({"strategy": "similarity", "size": 3, "calibration_texts": 4, "calibration_length": 8}, None),
    ],
)
def test_recipe_init_strategies(root, tmp_path, init, kept):
    r = parse_recipe(tiny_recipe(root, init=init, patch_order="first", train={"steps": 1}))
    d = Distiller(r, out=tmp_path / "run")
    d.setup()
    section = d.student.config.boomerang
    assert section["init"]["strategy"] == init["strategy"] and section["patch_order"] == "first"
    assert section["teacher"] == str(root / "teacher")
    assert list(d.layer_map.kept) == (kept or section["layer_map"]["kept"])
    assert d.layer_map.n_student == (len(kept) if kept else 3)
    assert d.train_step()["loss"] > 0


def test_mixed_context_members_train_only_the_student_layers_they_use(root, tmp_path):
    """loss.mixed: each micro-batch also trains one random family member; the member shares the student's very
    parameters, so exactly the student layers it keeps get its gradients; draws are reproducible by step."""
    from boomerang.train.mixed import MixedContext
    from boomerang.train.models import model_outputs

    r = parse_recipe(tiny_recipe(root, loss={"mixed": 0.5}, train={"steps": 2}))
    d = Distiller(r, out=tmp_path / "run")
    d.setup()
    mixed = d.models.mixed
    assert mixed is not None
    again = MixedContext(d.teacher, d.student, d.layer_map, seed=r.train.seed)
    draws = [mixed.draw(s, a).patched for s in range(1, 6) for a in range(4)]
    assert draws == [again.draw(s, a).patched for s in range(1, 6) for a in range(4)]
    assert len(set(draws)) > 3 and all(0 < len(p) < d.layer_map.n_student for p in draws)
    plan = mixed.draw(2, 1)
    member = mixed.member(plan)
    x = d.train_data.take(2).input_ids
    model_outputs(member, x, None, [], mode="logits").logits.float().logsumexp(-1).sum().backward()
    for i, layer in enumerate(d.student.model.layers):
        got = any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in layer.parameters())
        assert got == (i not in plan.patched), i
    assert all(p.grad is None for p in d.teacher.parameters())
    d.student.zero_grad(set_to_none=True)
    rec = d.train_step()
    assert rec["mixed_ce"] > 0 and rec["mixed_kl"] > 0
    sized = Distiller(
        parse_recipe(tiny_recipe(root, loss={"mixed": 0.5, "mixed_draw": "size"})), out=tmp_path / "s"
    )
    sized.setup()
    assert sized.models.mixed is not None and sized.models.mixed.draw_by == "size"
    main = rec["ce"] + 0.1 * rec["kl"] + d.loss_fn.cos_weight * rec["cos"]
    assert rec["loss"] == pytest.approx(main + 0.5 * (rec["mixed_ce"] + 0.1 * rec["mixed_kl"]), rel=1e-5)


def test_mixed_draw_by_size_is_uniform_over_intermediate_sizes_and_members():
    """loss.mixed_draw=size: the member's layer count is uniform over the sizes strictly between the student's and
    the teacher's, and within one size every member (multi-layer blocks) comes up equally often."""
    import itertools
    from collections import Counter

    from boomerang.train.mixed import MixedContext

    lm = LayerMap.from_kept([0, 1, 3, 6, 7, 9], 11)  # blocks 1, 2, 3, 1, 2, 2 layers: extras 1, 2, 1, 1
    mixed = MixedContext(None, None, lm, seed=3, draw="size")  # type: ignore[arg-type]
    draws = [mixed.draw(s, a).patched for s in range(1, 1501) for a in range(4)]
    assert draws[:40] == [
        MixedContext(None, None, lm, seed=3, draw="size").draw(s, a).patched  # type: ignore[arg-type]
        for s in range(1, 11)
        for a in range(4)
    ]

    def size(patched):
        return sum(len(b) if i in patched else 1 for i, b in enumerate(lm.blocks))

    by_size = Counter(size(p) for p in draws)
    assert sorted(by_size) == list(range(lm.n_student + 1, lm.n_teacher))  # 7..10: never 6 or 11
    assert max(by_size.values()) / min(by_size.values()) < 1.15
    multi = [i for i, b in enumerate(lm.blocks) if len(b) > 1]
    for n in by_size:
        members = Counter(tuple(i for i in p if i in multi) for p in draws if size(p) == n)
        exact = {c for k in range(len(multi) + 1) for c in itertools.combinations(multi, k) if size(c) == n}
        assert set(members) == exact, n  # every member of that size, and only those
        assert max(members.values()) / min(members.values()) < 1.3, (n, members)
    single = [i for i, b in enumerate(lm.blocks) if len(b) == 1]
    assert all(0.45 < sum(i in p for p in draws) / len(draws) < 0.55 for i in single)


def test_teacher_context_term_trains_and_is_logged(root, tmp_path, capsys):
    r = parse_recipe(
        tiny_recipe(root, loss={"ctx": 0.2, "ctx_mse": 0.1}, train={"steps": 3}, eval={"every": 0})
    )
    summary = distill(r, out=tmp_path / "run")
    plan = " ".join(capsys.readouterr().out.split())
    # the printed plan names every loss term that is on, and the precision with the reason it was chosen
    assert "+ ctx 0.2 + ctx-mse 0.1;" in plan and "fp32 (set in the recipe);" in plan, plan
    recs = _records(tmp_path / "run")
    assert all(rec["ctx"] > 0 and rec["ctx_mse"] > 0 for rec in recs)
    assert summary["train"]["ctx"] > 0 and summary["val_student"]["ctx"] > 0
