"""``boomerang.Family`` (zero-copy members in memory) and ``boomerang family`` (every member on disk)."""

import json

import pytest
import torch
from tiny import DECODERS, ids, make_pair, save_pair
from transformers import AutoModelForCausalLM

import boomerang as B
from boomerang.cli.app import run
from boomerang.family import ExportProgress, export_family
from boomerang.io.order_files import load_order


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def storage(model):
    return {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}


def no_temp_left(parent):
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(params=DECODERS)
def fam(request):
    teacher, student, lm = make_pair(request.param, tie=request.param != "gpt_neox")
    return B.Family(teacher, student, lm), teacher, student, lm


def test_members_share_storage_and_match_built_copies(fam):
    family, teacher, student, lm = fam
    x = ids()
    sources = storage(teacher) | storage(student)
    for order, sizes in (("last", family.ks), ("first", [1, 2])):
        for k in sizes:
            member = family.member(k, order=order)
            assert storage(member) <= sources  # not one new tensor
            copy = B.patch(teacher, student, lm, num_patched=k, order=order, copy=True)
            assert not storage(copy) & sources
            assert torch.equal(logits(member, x), logits(copy, x))
            assert member.config.boomerang["order"] == order
    # layer i of a member is the very tensor of its source layer
    member = family.member(patched=[1])
    arch = family.arch
    for i, (who, j) in enumerate(family.plan(patched=[1]).sources):
        src = teacher if who == "teacher" else student
        a = dict(member.named_parameters())
        b = dict(src.named_parameters())
        for name in b:
            if name.startswith(f"{arch.layers}.{j}."):
                mine = f"{arch.layers}.{i}." + name[len(f"{arch.layers}.{j}.") :]
                assert a[mine].data_ptr() == b[name].data_ptr()


def test_all_members_held_add_no_tensor_memory(fam):
    family, teacher, student, lm = fam
    members = family.members()
    assert sorted(members) == family.ks == list(range(lm.n_student + 1))
    held = set().union(*(storage(m) for m in members.values()))
    assert held <= storage(teacher) | storage(student)
    assert family.member(2) is members[2]  # remembered
    family.clear()
    assert family.member(2) is not members[2]


def test_extremes_are_teacher_and_student(fam):
    family, teacher, student, lm = fam
    x = ids()
    assert torch.equal(logits(family[0], x), logits(student, x))
    assert torch.equal(logits(family[lm.n_student], x), logits(teacher, x))
    assert len(family) == lm.n_student + 1


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_kv_cache_generation_on_two_members_used_alternately(arch):
    teacher, student, lm = make_pair(arch, tie=True)
    family = B.Family(teacher, student, lm)
    a, b = family.member(1), family.member(3)
    ref_a = B.patch(teacher, student, lm, num_patched=1, copy=True)
    ref_b = B.patch(teacher, student, lm, num_patched=3, copy=True)
    prompt = ids(1, 6)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = (ref_a.generate(prompt, **kw), ref_b.generate(prompt, **kw))
        for _ in range(2):  # alternate whole generations
            assert torch.equal(a.generate(prompt, **kw), expected[0])
            assert torch.equal(b.generate(prompt, **kw), expected[1])
        # interleave single decoding steps, each member with its own cache
        caches, seqs = [None, None], [prompt, prompt]
        for _step in range(6):
            for i, m in enumerate((a, b)):
                inp = seqs[i] if caches[i] is None else seqs[i][:, -1:]
                out = m(inp, past_key_values=caches[i], use_cache=True)
                caches[i] = out.past_key_values
                seqs[i] = torch.cat([seqs[i], out.logits[:, -1:].argmax(-1)], dim=1)
        for i, ref in enumerate((ref_a, ref_b)):
            assert torch.equal(seqs[i], expected[i][:, : seqs[i].shape[1]])
            assert torch.equal(logits(a if i == 0 else b, seqs[i]), logits(ref, seqs[i]))


def test_plans_orders_and_table():
    teacher, student, lm = make_pair("llama")
    family = B.Family(teacher, student, lm, order="first")
    assert family.member(2).config.boomerang["patched_student_layers"] == [0, 1]
    assert family.member(2, order="last").config.boomerang["patched_student_layers"] == [2, 3]
    assert family.member(2, order=[3, 1, 0, 2]).config.boomerang["patched_student_layers"] == [1, 3]
    po = B.PatchOrder.from_sequence("mine", [1, 0, 3, 2], 4)
    assert family.order(po) is po and family.plan(1, order=po).patched == (1,)
    table = family.table()
    assert [r["K"] for r in table] == family.ks
    assert table[2]["patched"] == [0, 1]
    assert table[2]["trainable"] == B.count_params(family.member(2)).trainable
    with pytest.raises(B.BoomerangError, match="out of range"):
        family.member(7)
    with pytest.raises(B.BoomerangError, match="not both"):
        family.member(1, patched=[0])
    with pytest.raises(B.BoomerangError, match="do not exist"):
        family.member(patched=[4])
    with pytest.raises(B.BoomerangError, match="unknown patch order"):
        family.member(1, order="middle")
    with pytest.raises(B.BoomerangError, match="calibration"):
        family.order("similarity")
    assert "llama" in repr(family)


def test_family_to_casts_and_rebuilds_members():
    teacher, student, lm = make_pair("qwen3", tie=True)
    family = B.Family(teacher, student, lm)
    before = family.member(2)
    family.to(torch.bfloat16)
    after = family.member(2)
    assert after is not before and after.dtype == torch.bfloat16
    assert storage(after) <= storage(teacher) | storage(student)
    ref = B.patch(teacher, student, lm, num_patched=2, copy=True)
    assert torch.equal(logits(after, ids()), logits(ref, ids()))


def test_family_rejects_mismatched_pair():
    teacher, student, _lm = make_pair("llama")
    with pytest.raises(B.BoomerangError, match="layer map"):
        B.Family(teacher, student, B.LayerMap.from_kept([0, 2, 4], 6))


# ---- export ---------------------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    teacher, student, lm = make_pair("qwen3", tie=True)
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    return tmp_path, t_dir, s_dir, teacher, student, lm


def _files_equal(a, b):
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_export_writes_every_member_and_a_complete_manifest(saved):
    tmp, t_dir, s_dir, teacher, student, lm = saved
    out = export_family(t_dir, s_dir, tmp / "fam")
    manifest = json.loads((out / "family.json").read_text())
    m = lm.n_student
    assert manifest["format"] == "boomerang-family" and manifest["written"] == "stream"
    assert manifest["layer_map"] == lm.to_json() and manifest["n_student"] == m
    assert manifest["order"]["name"] == "last" and manifest["dtype"] == "float32"
    assert [r["K"] for r in manifest["members"]] == list(range(m + 1))
    order = load_order(out / "order.json")
    x = ids()
    for row in manifest["members"]:
        k = row["K"]
        plan = B.make_plan(lm, num_patched=k, order=B.resolve_order(order, lm))
        assert row["patched_student_layers"] == list(plan.patched)
        assert row["layer_sources"] == [list(s) for s in plan.sources]
        assert row["teacher_layers"] == plan.teacher_layers
        assert row["n_layers"] == plan.n_layers
        assert {row["embedding_from"], row["head_from"]} <= {"teacher", "student"}
        expected = B.patch(teacher, student, lm, num_patched=k)
        assert row["params"] == B.count_params(expected).as_dict()
        d = out / row["dir"]
        assert row["dir"].startswith(f"K{k:02d}-") and sorted(p.name for p in d.iterdir()) == row["files"]
        st = sum(p.stat().st_size for p in d.glob("model*.safetensors"))
        assert row["weights_bytes"] < st < row["weights_bytes"] + 64_000  # weights plus headers
        model = AutoModelForCausalLM.from_pretrained(d).eval()
        assert torch.equal(logits(model, x), logits(expected, x))
    readme = (out / "README.md").read_text()
    for row in manifest["members"]:
        assert f"| {row['K']} | `{row['dir']}` | {row['n_layers']} |" in readme
    assert no_temp_left(tmp)


def test_stream_and_memory_exports_are_identical(saved):
    tmp, t_dir, s_dir, *_ = saved
    a = export_family(t_dir, s_dir, tmp / "a", sizes=[0, 2, 4], order="first", stream=True)
    b = export_family(t_dir, s_dir, tmp / "b", sizes=[4, 0, 2], order="first", stream=False)
    ma, mb = json.loads((a / "family.json").read_text()), json.loads((b / "family.json").read_text())
    assert (ma["written"], mb["written"]) == ("stream", "memory")
    assert [r["dir"] for r in ma["members"]] == [r["dir"] for r in mb["members"]]
    for r in ma["members"]:
        assert _files_equal(a / r["dir"], b / r["dir"])
    assert ma["members"] == mb["members"]
    assert (a / "order.json").read_text() == (b / "order.json").read_text()


@pytest.mark.parametrize("stream", [True, False])
def test_export_takes_calibration_ids_as_data(saved, stream):
    """A data-driven order from ``data`` given as token ids (a tensor, or lists of ints) instead of a text source."""
    tmp, t_dir, s_dir, teacher, student, lm = saved
    cal = ids(4, 12)
    expected = B.compute_order("similarity", teacher, student, lm, cal)
    for i, data in enumerate((cal, cal.tolist())):
        out = export_family(
            t_dir, s_dir, tmp / f"f{i}", sizes=[1], order="similarity", data=data, stream=stream
        )
        assert load_order(out / "order.json") == expected


def test_family_object_export(saved):
    tmp, t_dir, s_dir, _teacher, _student, lm = saved
    family = B.Family(t_dir, s_dir)
    assert family.tokenizer is not None and family.layer_map == lm
    out = family.export(tmp / "fam", sizes=[1, 3], order="first")
    manifest = json.loads((out / "family.json").read_text())
    assert manifest["written"] == "memory" and [r["K"] for r in manifest["members"]] == [1, 3]
    assert (out / manifest["members"][0]["dir"] / "tokenizer.json").is_file()


class Interrupt(ExportProgress):
    def __init__(self, after_members):
        self.after, self.done = after_members, 0

    def advance(self, nbytes):
        if self.done == self.after:
            raise KeyboardInterrupt

    def done_member(self):
        self.done += 1


@pytest.mark.parametrize("stream", [True, False])
def test_interrupted_export_leaves_nothing(saved, stream):
    tmp, t_dir, s_dir, *_ = saved
    progress = Interrupt(after_members=2)
    with pytest.raises(KeyboardInterrupt):
        export_family(t_dir, s_dir, tmp / "fam", stream=stream, progress=progress)
    assert progress.done == 2  # two members were complete when it stopped
    assert not (tmp / "fam").exists() and no_temp_left(tmp)


def test_disk_space_is_checked_first(saved, monkeypatch, capsys):
    import shutil

    tmp, t_dir, s_dir, *_ = saved
    real = shutil.disk_usage
    monkeypatch.setattr("shutil.disk_usage", lambda p: real(p)._replace(free=100_000))
    code = run(["family", "--teacher", str(t_dir), "--student", str(s_dir), "--out", str(tmp / "fam")])
    assert code == 2
    err = capsys.readouterr().err
    assert "not enough disk space" in err and "--sizes" in err
    assert not (tmp / "fam").exists() and no_temp_left(tmp)


# ---- the CLI --------------------------------------------------------------------------------------------------


def test_cli_family(saved, capsys):
    tmp, t_dir, s_dir, *_ = saved
    base = ["family", "--teacher", str(t_dir), "--student", str(s_dir)]
    assert run([*base, "--out", str(tmp / "f"), "--sizes", "0,2-3", "--order", "first"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 members" in printed
    manifest = json.loads((tmp / "f" / "family.json").read_text())
    assert [r["dir"] for r in manifest["members"]] == ["K00-4layers", "K02-6layers", "K03-6layers"]
    # rebuild exactly from the saved order
    assert (
        run([*base, "--out", str(tmp / "g"), "--sizes", "2", "--order", str(tmp / "f" / "order.json")]) == 0
    )
    assert _files_equal(tmp / "f" / "K02-6layers", tmp / "g" / "K02-6layers")
    assert (
        run(
            [
                *base,
                "--out",
                str(tmp / "h"),
                "--sizes",
                "1",
                "--no-stream",
                "--dtype",
                "bfloat16",
                "--max-shard-size",
                "20KB",
            ]
        )
        == 0
    )
    member = next((tmp / "h").glob("K01-*"))
    assert len(list(member.glob("model-*.safetensors"))) > 1
    assert AutoModelForCausalLM.from_pretrained(member).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sizes", "9"], "out of range"),
        (["--sizes", "x"], "cannot read --sizes"),
        (["--order", "middle"], "unknown patch order"),
        (["--order", "similarity"], "--data"),
        (["--dtype", "fp8"], "unknown dtype"),
        (["--max-shard-size", "big"], "--max-shard-size"),
        (["--layers", "0,2,4"], "carries its own layer map"),  # issue 13: --layers may not contradict it
    ],
)
def test_cli_family_bad_input(saved, capsys, extra, message):
    tmp, t_dir, s_dir, *_ = saved
    out = tmp / "fam"
    code = run(["family", "--teacher", str(t_dir), "--student", str(s_dir), "--out", str(out), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and no_temp_left(tmp)


def test_cli_family_refuses_to_overwrite(saved, capsys):
    tmp, t_dir, s_dir, *_ = saved
    out = tmp / "fam"
    out.mkdir()
    (out / "keep").write_text("x")
    args = ["family", "--teacher", str(t_dir), "--student", str(s_dir), "--out", str(out), "--sizes", "0"]
    assert run(args) == 2 and "already exists" in capsys.readouterr().err
    assert run([*args, "--force"]) == 0 and not (out / "keep").exists()
    assert (
        run(["family", "--teacher", "org/x", "--student", str(s_dir), "--out", str(tmp / "o"), "--stream"])
        == 2
    )
    assert "--stream needs" in capsys.readouterr().err


def test_distilbert_family_shares_storage():
    from test_encoders import distil_from_bert
    from tiny import make_teacher

    bert = make_teacher("bert", n_layers=12)
    lm = B.LayerMap.preset("distilbert")
    distil = distil_from_bert(bert, lm)
    family = B.Family(bert, distil, lm)
    x = ids()
    for k in (0, 3, 6):
        member = family.member(k)
        assert type(member).__name__ == "BertForMaskedLM"
        expected = B.patch(bert, distil, lm, num_patched=k, copy=True)
        assert torch.equal(logits(member, x), logits(expected, x))
    # every tensor but the synthesized all-zero token-type table is the teacher's or the student's
    new = storage(family.member(3)) - storage(bert) - storage(distil)
    assert len(new) <= 2


def test_an_order_file_is_accepted_as_a_path_or_a_string(tmp_path):
    """A saved order can be named by a pathlib.Path (the demo passes its greedy-kl file that way) or a str."""
    from boomerang.io.order_files import save_order

    teacher, student, lm = make_pair("llama")
    family = B.Family(teacher, student, lm)
    save_order(B.PatchOrder.from_sequence("mine", [1, 0, 3, 2], 4), tmp_path / "order.json")
    for spec in (tmp_path / "order.json", str(tmp_path / "order.json")):
        assert set(family.order(spec).patched(2)) == {0, 1}
        assert family.member(1, order=spec).config.boomerang["patched_student_layers"] == [1]
