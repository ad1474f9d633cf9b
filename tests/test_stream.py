"""Streaming builds (``boomerang build --stream``) against the in-memory build, on tiny models."""

import json
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import DECODERS, ids, make_pair, make_student, make_teacher, save_pair, tiny_config
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

import boomerang as B
from boomerang.cli.app import run
from boomerang.io.fastbuild import FastBuilder, NotFast, natural_key, open_builder, stream_build
from boomerang.io.loading import save_tokenizer
from boomerang.io.stream import OutTensor, StreamBuilder, TensorRef, convert, read_header, write_safetensors

PLANS = ([], [0], [3], [1, 2], [0, 1, 2, 3])


def memory_build(t_dir, s_dir, out, patched, lm, dtype=None, **save):
    """The in-memory path exactly as `boomerang build --no-stream` runs it."""
    teacher, student = B.load_model(t_dir, dtype=dtype), B.load_model(s_dir, dtype=dtype)
    model = B.patch(teacher, student, lm, patched)
    model.save_pretrained(out, **save)
    save_tokenizer(out, t_dir)
    return model


def same_files(a, b):
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    return [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]


def no_temp_left(parent):
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(
    params=[(a, tie) for a in DECODERS for tie in (True, False)], ids=lambda p: f"{p[0]}-tie{p[1]}"
)
def saved(request, tmp_path):
    arch, tie = request.param
    teacher, student, lm = make_pair(arch, tie=tie)
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    return tmp_path, t_dir, s_dir, lm


def test_stream_is_byte_identical_to_memory_build(saved):
    tmp, t_dir, s_dir, lm = saved
    for patched in PLANS:
        ref, out = tmp / f"ref{patched}", tmp / f"out{patched}"
        memory_build(t_dir, s_dir, ref, patched, lm)
        stream_build(t_dir, s_dir, out, patched=patched)
        # every file: weights, config, generation config, tokenizer
        assert same_files(ref, out) == [], patched
    assert no_temp_left(tmp)


def test_sharded_inputs_and_outputs(saved):
    tmp, t_dir, s_dir, lm = saved
    # the same models re-saved as several shards with an index
    t_sh, s_sh = tmp / "t-sharded", tmp / "s-sharded"
    B.load_model(t_dir).save_pretrained(t_sh, max_shard_size="20KB")
    B.load_model(s_dir).save_pretrained(s_sh, max_shard_size="20KB")
    for d, src in ((t_sh, t_dir), (s_sh, s_dir)):
        assert (d / "model.safetensors.index.json").is_file()
        for f in src.iterdir():
            if not f.name.startswith(("model", "config")):
                (d / f.name).write_bytes(f.read_bytes())
    for patched in ([1, 2], [0, 1, 2, 3]):
        ref, out = tmp / f"ref{patched}", tmp / f"out{patched}"
        memory_build(t_dir, s_dir, tmp / f"single{patched}", patched, lm)
        memory_build(t_dir, s_dir, ref, patched, lm, max_shard_size="16KB")
        stream_build(t_sh, s_sh, out, patched=patched, max_shard_size="16KB")
        assert len(list(out.glob("model-*.safetensors"))) > 1
        assert same_files(ref, out) == []
        # both builders, forced, read sharded inputs into single or sharded outputs
        for fast in (True, False):
            for shard in ("16KB", "50GB"):
                forced = tmp / f"forced{patched}{fast}{shard}"
                stream_build(t_sh, s_sh, forced, patched=patched, max_shard_size=shard, fast=fast)
                assert same_files(ref if shard == "16KB" else out.parent / f"single{patched}", forced) == []


@pytest.mark.parametrize("arch", DECODERS)
def test_streamed_model_reloads_with_plain_from_pretrained(arch, tmp_path):
    teacher, student, lm = make_pair(arch, tie=True)
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    x = ids()
    for patched in ([0], [3], [1, 2]):
        out = tmp_path / f"out{patched}"
        stream_build(t_dir, s_dir, out, patched=patched)
        model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        expected = B.patch(teacher, student, lm, patched)
        with torch.no_grad():
            assert torch.equal(model.eval()(x).logits, expected(x).logits)
        assert model.config.boomerang["patched_student_layers"] == patched


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_conversion_matches_loading_in_that_dtype(tmp_path, dtype):
    teacher, student, lm = make_pair("qwen3", tie=True)
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    memory_build(t_dir, s_dir, tmp_path / "ref", [0, 3], lm, dtype=dtype)
    stream_build(t_dir, s_dir, tmp_path / "out", patched=[0, 3], dtype=dtype)
    assert same_files(tmp_path / "ref", tmp_path / "out") == []
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {getattr(torch, dtype)}


def test_gpt2_checkpoint_without_base_model_prefix(tmp_path):
    """The original GPT-2 files name tensors h.0.attn... (no `transformer.` prefix) and omit the tied head."""
    teacher, student, lm = make_pair("gpt2", tie=True)
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    for d in (t_dir, s_dir):
        sd = load_file(d / "model.safetensors")
        save_file({k.removeprefix("transformer."): v for k, v in sd.items()}, d / "model.safetensors")
    assert "h.0.attn.c_attn.weight" in load_file(t_dir / "model.safetensors")
    with pytest.raises(NotFast, match="not one that GPT2LMHeadModel saves"):
        FastBuilder.create(t_dir, s_dir)
    for patched in ([0], [3], [1, 2]):  # [3]: student embedding, teacher head (the tied head is the wte)
        memory_build(t_dir, s_dir, tmp_path / f"ref{patched}", patched, lm)
        stream_build(t_dir, s_dir, tmp_path / f"out{patched}", patched=patched)
        assert same_files(tmp_path / f"ref{patched}", tmp_path / f"out{patched}") == []


def test_missing_generation_config_is_derived_like_from_pretrained(tmp_path):
    teacher, student, lm = make_pair("llama")
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    (t_dir / "generation_config.json").unlink()
    memory_build(t_dir, s_dir, tmp_path / "ref", [3], lm)
    stream_build(t_dir, s_dir, tmp_path / "out", patched=[3])
    assert same_files(tmp_path / "ref", tmp_path / "out") == []


def test_bert_teacher_and_distilbert_student_stream(tmp_path):
    from test_encoders import distil_from_bert
    from tiny import make_teacher

    bert = make_teacher("bert", n_layers=12)
    lm = B.LayerMap.preset("distilbert")
    distil = distil_from_bert(bert, lm)
    t_dir, s_dir = save_pair(tmp_path, bert, distil, lm)
    with pytest.raises(NotFast, match="different model types"):
        FastBuilder.create(t_dir, s_dir)
    x = ids()
    for patched in ([], [0], [5], [1, 2], list(range(6))):
        out = tmp_path / f"out{patched}"
        stream_build(t_dir, s_dir, out, patched=patched)
        model, info = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
        assert not info["missing_keys"] and type(model).__name__ == "BertForMaskedLM"
        with torch.no_grad():
            assert torch.equal(model.eval()(x).logits, B.patch(bert, distil, lm, patched)(x).logits)


def test_writer_matches_safetensors_save_file(tmp_path):
    """Our incremental writer lays a file out byte for byte as safetensors' save_file does."""
    tensors = {
        "b.weight": torch.randn(3, 5),
        "a.weight": torch.randn(7).to(torch.bfloat16),
        "pos": torch.arange(6).reshape(1, 6),
        "half": torch.randn(2, 2).half(),
        "flag": torch.tensor([True, False]),
        "empty": torch.zeros(0, 4),
        "z": torch.randn(4, dtype=torch.float64),
        # every other dtype, so that the layout order (by dtype, then name) is checked against safetensors
        **{f"t_{d}": torch.ones(3, dtype=getattr(torch, d)) for d in ("uint8", "int8", "int16", "int32")},
        **{f"t_{d}": torch.ones(3, dtype=getattr(torch, d)) for d in ("uint16", "uint32", "uint64")},
        **{f"t_{d}": torch.ones(3).to(getattr(torch, d)) for d in ("float8_e4m3fn", "float8_e5m2")},
    }
    save_file(tensors, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    refs = read_header(tmp_path / "ref.safetensors")
    out = [OutTensor(name, refs[name], refs[name].dtype) for name in tensors]
    write_safetensors(tmp_path / "out.safetensors", out)
    assert (tmp_path / "out.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    # converting on the fly equals converting in memory
    conv = [OutTensor(n, refs[n], "F16") for n in ("b.weight", "a.weight", "z")]
    write_safetensors(tmp_path / "conv.safetensors", conv, convert=convert)
    got = load_file(tmp_path / "conv.safetensors")
    for n in ("b.weight", "a.weight", "z"):
        assert torch.equal(got[n], tensors[n].to(torch.float16))
    # copies and conversions interleaved in one file
    mixed = {n: (t.to(torch.bfloat16) if t.is_floating_point() else t) for n, t in tensors.items()}
    save_file(mixed, tmp_path / "mixed-ref.safetensors", metadata={"format": "pt"})
    out = [
        OutTensor(n, refs[n], "BF16" if tensors[n].is_floating_point() else refs[n].dtype) for n in tensors
    ]
    write_safetensors(tmp_path / "mixed.safetensors", out, convert=convert)
    assert (tmp_path / "mixed.safetensors").read_bytes() == (tmp_path / "mixed-ref.safetensors").read_bytes()
    with pytest.raises(B.BoomerangError, match="needs a conversion"):
        write_safetensors(tmp_path / "no.safetensors", conv)


def test_synthesized_tensors_are_written(tmp_path):
    ref = TensorRef(dtype="F32", shape=(2, 3), make=lambda: torch.zeros(2, 3))
    write_safetensors(tmp_path / "s.safetensors", [OutTensor("t", ref, "BF16")], convert=convert)
    assert torch.equal(load_file(tmp_path / "s.safetensors")["t"], torch.zeros(2, 3, dtype=torch.bfloat16))


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_failure_mid_export_leaves_nothing(saved_llama, exc):
    tmp, t_dir, s_dir, _lm = saved_llama
    out = tmp / "out"
    written = []

    def progress(n):
        written.append(n)
        if len(written) == 10:
            raise exc("stop")

    with pytest.raises(exc):
        stream_build(t_dir, s_dir, out, patched=[1, 2], progress=progress, max_shard_size="16KB")
    assert len(written) == 10 and not out.exists() and no_temp_left(tmp)
    # an existing output survives a failed --force rebuild untouched
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    written.clear()
    with pytest.raises(exc):
        stream_build(t_dir, s_dir, out, patched=[1, 2], progress=progress, force=True)
    assert (out / "keep.txt").read_text() == "mine" and no_temp_left(tmp)


@pytest.fixture
def saved_llama(tmp_path):
    teacher, student, lm = make_pair("llama", tie=True)
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    return tmp_path, t_dir, s_dir, lm


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_corrupt_and_incomplete_inputs(saved_llama):
    tmp, t_dir, s_dir, _lm = saved_llama
    weights = s_dir / "model.safetensors"
    good = weights.read_bytes()
    (_n,) = struct.unpack("<Q", good[:8])
    cases = [
        (good[:5], "shorter than its 8-byte header"),
        (struct.pack("<Q", 10**12) + good[8:], "does not fit"),
        (good[:8] + b"{not json" + good[8 + 9 :], "unreadable header"),
        (good[: len(good) - 100], "outside the file"),
    ]
    for data, message in cases:
        weights.write_bytes(data)
        with pytest.raises(B.BoomerangError, match=message):
            stream_build(t_dir, s_dir, tmp / "out", patched=[1])
        assert not (tmp / "out").exists() and no_temp_left(tmp)
    weights.write_bytes(good)
    # an index pointing at a missing shard
    (s_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"x": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(B.BoomerangError, match="missing"):
        stream_build(t_dir, s_dir, tmp / "out", patched=[1])
    (s_dir / "model.safetensors.index.json").unlink()


def test_missing_tensor_is_named(saved_llama):
    tmp, t_dir, s_dir, _lm = saved_llama
    sd = load_file(t_dir / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, t_dir / "model.safetensors")
    with pytest.raises(
        B.BoomerangError, match=r"teacher checkpoint .* has no tensor 'model.layers.1.mlp.up_proj"
    ):
        stream_build(t_dir, s_dir, tmp / "out", patched=[0])
    stream_build(t_dir, s_dir, tmp / "ok", patched=[3])  # a plan that does not need that layer still works


def test_mixed_dtypes_default_to_the_wider_one(tmp_path):
    teacher, student, lm = make_pair("llama")
    t_dir, s_dir = save_pair(tmp_path, teacher.to(torch.bfloat16), student, lm)
    assert StreamBuilder(t_dir, s_dir).dtype == torch.float32  # bf16 teacher, fp32 student: fp32
    stream_build(t_dir, s_dir, tmp_path / "out", patched=[1])
    assert {t.dtype for t in load_file(tmp_path / "out" / "model.safetensors").values()} == {torch.float32}
    stream_build(t_dir, s_dir, tmp_path / "bf16", patched=[1], dtype="bfloat16")  # an explicit dtype wins
    assert {t.dtype for t in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.bfloat16}


def test_builder_writes_every_member_and_counts_bytes(saved_llama):
    tmp, t_dir, s_dir, lm = saved_llama
    builder = StreamBuilder(t_dir, s_dir)
    for k in range(lm.n_student + 1):
        plan = builder.plan(k)
        d = tmp / f"m{k}"
        d.mkdir()
        seen = []
        n = builder.write(plan, d, progress=seen.append, tokenizer=False)
        assert n == sum(seen) == builder.nbytes(plan)
        on_disk = sum(t.numel() * t.element_size() for t in load_file(d / "model.safetensors").values())
        assert on_disk == n and not (d / "tokenizer.json").exists()
    with pytest.raises(B.BoomerangError, match="out of range"):
        builder.plan(9)


# ---- the CLI --------------------------------------------------------------------------------------------------


def test_cli_build_streams_by_default(saved_llama, capsys):
    tmp, t_dir, s_dir, _lm = saved_llama
    base = ["build", "--teacher", str(t_dir), "--student", str(s_dir), "-k", "2"]
    assert run([*base, "--out", str(tmp / "s")]) == 0
    assert "(streamed)" in " ".join(capsys.readouterr().out.split())
    assert run([*base, "--out", str(tmp / "m"), "--no-stream"]) == 0
    assert "(built in memory)" in " ".join(capsys.readouterr().out.split())
    assert same_files(tmp / "m", tmp / "s") == []
    assert run([*base, "--out", str(tmp / "sh"), "--max-shard-size", "16KB"]) == 0
    index = json.loads((tmp / "sh" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and index["metadata"]["total_size"] > 0


def test_cli_build_stream_bad_input(saved_llama, capsys):
    tmp, t_dir, s_dir, _lm = saved_llama
    base = ["build", "--student", str(s_dir), "-k", "1", "--out", str(tmp / "o")]
    assert run([*base, "--teacher", str(t_dir), "--max-shard-size", "lots"]) == 2
    assert "--max-shard-size" in capsys.readouterr().err
    assert not (tmp / "o").exists() and no_temp_left(tmp)
    # --stream insists on local safetensors checkpoints (not a Hub id or a .gguf file)
    assert run([*base, "--teacher", "some-org/some-model", "--stream"]) == 2
    assert "--stream needs" in capsys.readouterr().err


def test_cli_build_with_saved_order_writes_order_json(saved_llama):
    tmp, t_dir, s_dir, _lm = saved_llama
    from boomerang.io.order_files import load_order, save_order

    po = B.PatchOrder.from_sequence("mine", [1, 3, 0, 2], 4)
    save_order(po, tmp / "o.json")
    out = tmp / "k2"
    assert (
        run(
            [
                "build",
                "--teacher",
                str(t_dir),
                "--student",
                str(s_dir),
                "-k",
                "2",
                "--order",
                str(tmp / "o.json"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["boomerang"]["patched_student_layers"] == [1, 3]
    assert load_order(out / "order.json") == po
    assert (
        run(
            [
                "build",
                "--teacher",
                str(t_dir),
                "--student",
                str(s_dir),
                "-k",
                "2",
                "--out",
                str(tmp / "plain"),
            ]
        )
        == 0
    )
    assert not (tmp / "plain" / "order.json").exists()  # built-in orders are recorded in config.json


def test_cli_data_driven_order_needs_data(saved_llama, capsys):
    tmp, t_dir, s_dir, _lm = saved_llama
    args = [
        "build",
        "--teacher",
        str(t_dir),
        "--student",
        str(s_dir),
        "-k",
        "2",
        "--order",
        "similarity",
        "--out",
        str(tmp / "o"),
    ]
    assert run(args) == 2
    assert "--data" in capsys.readouterr().err and not (tmp / "o").exists()


def test_cli_data_driven_order_streams(saved_llama, tmp_path_factory):
    tmp, t_dir, s_dir, lm = saved_llama
    from boomerang.analysis.resolve import resolve_order
    from boomerang.data import calibration_ids
    from boomerang.io.order_files import load_order

    text = tmp_path_factory.mktemp("data") / "t.txt"
    text.write_text(" ".join(f"w{4 + (i * 7) % 90}" for i in range(1500)))
    tok = B.load_tokenizer(t_dir)
    try:
        expected = resolve_order(
            "similarity",
            lm,
            teacher=B.load_model(t_dir),
            student=B.load_model(s_dir),
            calibration=calibration_ids(str(text), tok),
        )
    except B.BoomerangError as e:
        if "not implemented" in str(e):
            pytest.skip("data-driven orders are not implemented yet")
        raise
    out = tmp / "sim"
    assert (
        run(
            [
                "build",
                "--teacher",
                str(t_dir),
                "--student",
                str(s_dir),
                "-k",
                "2",
                "--order",
                "similarity",
                "--data",
                str(text),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert load_order(out / "order.json").subsets == expected.subsets
    cfg = json.loads((out / "config.json").read_text())["boomerang"]
    assert cfg["patched_student_layers"] == list(expected.patched(2)) and cfg["order"] == "similarity"


# ---- the real teacher -------------------------------------------------------------------------------------------


@pytest.mark.real
def test_real_smollm2_member_streams_identically(tmp_path, real_teacher_dir):
    from tiny import make_student

    teacher = B.load_model(real_teacher_dir)
    lm = B.LayerMap.every(30)
    student = make_student(teacher, lm, scale=1e-3)
    s_dir = tmp_path / "student"
    student.save_pretrained(s_dir)
    del teacher, student
    for patched, dtype in (([10, 12, 13, 14, 15], None), ([0, 1, 7], "bfloat16")):
        ref, out = tmp_path / f"ref{dtype}", tmp_path / f"out{dtype}"
        memory_build(real_teacher_dir, s_dir, ref, patched, lm, dtype=dtype)
        stream_build(real_teacher_dir, s_dir, out, patched=patched, dtype=dtype)
        assert same_files(ref, out) == []
        for fast in (False, True) if dtype is None else (False,):  # bfloat16 needs converting: not fast
            forced = tmp_path / f"forced{dtype}{fast}"
            stream_build(real_teacher_dir, s_dir, forced, patched=patched, dtype=dtype, fast=fast)
            assert same_files(ref, forced) == []
    with pytest.raises(NotFast, match="conversion"):
        FastBuilder.create(real_teacher_dir, s_dir, dtype="bfloat16")
    # the tokenizer (with its chat template) is the teacher's, byte for byte, and encodes identically
    assert {p.name for p in real_teacher_dir.iterdir()} == {p.name for p in out.iterdir()}
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (real_teacher_dir / name).read_bytes() == (out / name).read_bytes()
    a, b = B.load_tokenizer(real_teacher_dir), B.load_tokenizer(out)
    chat = [{"role": "user", "content": "What is boomerang distillation? Say it in one line."}]
    assert a.apply_chat_template(chat, tokenize=True) == b.apply_chat_template(chat, tokenize=True)
    assert a("Hello, world! 123")["input_ids"] == b("Hello, world! 123")["input_ids"]


def test_stream_build_checks_free_space(saved_llama, monkeypatch):
    import shutil

    tmp, t_dir, s_dir, _lm = saved_llama
    real = shutil.disk_usage
    monkeypatch.setattr("shutil.disk_usage", lambda p: real(p)._replace(free=10_000))
    with pytest.raises(B.BoomerangError, match="not enough disk space: the model needs about"):
        stream_build(t_dir, s_dir, tmp / "out", patched=[1])
    assert not (tmp / "out").exists() and no_temp_left(tmp)


def test_cli_build_checks_free_space_before_streaming(saved_llama, monkeypatch, capsys):
    import shutil

    tmp, t_dir, s_dir, _lm = saved_llama
    real = shutil.disk_usage
    monkeypatch.setattr("shutil.disk_usage", lambda p: real(p)._replace(free=10_000))
    args = ["build", "--teacher", str(t_dir), "--student", str(s_dir), "-k", "2", "--out", str(tmp / "o")]
    assert run(args) == 2
    assert "not enough disk space: the model needs about" in capsys.readouterr().err
    assert not (tmp / "o").exists() and no_temp_left(tmp)


# ---- the torch-free fast path (boomerang.io.fastbuild) ---------------------------------------------------------------


def test_fast_path_writes_what_the_transformers_path_writes(saved):
    tmp, t_dir, s_dir, _lm = saved
    fast, slow = FastBuilder.create(t_dir, s_dir), StreamBuilder(t_dir, s_dir)
    assert isinstance(open_builder(t_dir, s_dir), FastBuilder)
    for patched in PLANS:
        plan = slow.plan(patched=patched)
        # the same tensors from the same sources, in the same (state-dict) order; the same parameter counts
        assert fast.tensors(plan) == slow.tensors(plan)[0]
        assert fast.nbytes(plan) == slow.nbytes(plan)
        assert fast.params(plan) == slow.params(plan)  # slow: count_params of the member's meta model
        for shard in ("50GB", "16KB"):
            a, b = tmp / f"fast{patched}{shard}", tmp / f"slow{patched}{shard}"
            stream_build(t_dir, s_dir, a, patched=patched, max_shard_size=shard, fast=True)
            stream_build(t_dir, s_dir, b, patched=patched, max_shard_size=shard, fast=False)
            assert same_files(a, b) == [], (patched, shard)  # weights, index, configs, tokenizer
    assert no_temp_left(tmp)


def test_fast_path_with_biases_and_a_saved_sharded_index(tmp_path):
    teacher, student, lm = make_pair("llama", tie=False, attention_bias=True, mlp_bias=True)
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    fast, slow = FastBuilder.create(t_dir, s_dir), StreamBuilder(t_dir, s_dir)
    for k in range(lm.n_student + 1):
        plan = slow.plan(k)
        assert fast.tensors(plan) == slow.tensors(plan)[0]
        a, b = tmp_path / f"fast{k}", tmp_path / f"slow{k}"
        fast.check_space(plan, a)
        for builder, d in ((fast, a), (slow, b)):
            d.mkdir()
            builder.write(plan, d, max_shard_size="8KB")
        assert len(list(a.glob("model-*"))) > 2 and same_files(a, b) == []


def test_natural_key_sorts_like_transformers():
    from transformers.core_model_loading import dot_natural_key

    names = [
        "gpt_neox.layers.10.mlp.dense_4h_to_h.weight",
        "gpt_neox.layers.2.attention.dense.bias",
        "gpt_neox.layers.2.attention.dense.weight",
        "embed_out.weight",
        "lm_head.weight",
        "gpt_neox.embed_in.weight",
        "a.shard_11.x",
        "a.shard_2.x",
        "a.shard.x",
        "gpt_neox.final_layer_norm.bias",
    ]
    assert sorted(names, key=natural_key) == sorted(names, key=dot_natural_key)


def test_saved_layouts_name_transformers_classes():
    from boomerang.core.arch import ARCHS
    from boomerang.core.params import meta_model

    for model_type, arch in ARCHS.items():
        if arch.saved is None:
            continue
        assert type(meta_model(tiny_config(model_type))).__name__ == arch.saved.model_class


def _add_tensors(directory, extra):
    sd = load_file(directory / "model.safetensors")
    save_file({**sd, **extra}, directory / "model.safetensors", metadata={"format": "pt"})


def _stale_rotary_buffers(t_dir, s_dir):
    for d in (t_dir, s_dir):
        n = json.loads((d / "config.json").read_text())["num_hidden_layers"]
        _add_tensors(d, {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(4) for i in range(n)})


def _old_transformers_config(t_dir, s_dir):
    cfg = json.loads((t_dir / "config.json").read_text())
    (t_dir / "config.json").write_text(json.dumps({**cfg, "transformers_version": "4.57.1"}, indent=2))


def _tied_head_saved_anyway(t_dir, s_dir):
    _add_tensors(
        t_dir, {"lm_head.weight": load_file(t_dir / "model.safetensors")["model.embed_tokens.weight"]}
    )


def _student_layer_missing_a_tensor(t_dir, s_dir):
    sd = load_file(s_dir / "model.safetensors")
    del sd["model.layers.2.mlp.up_proj.weight"]
    save_file(sd, s_dir / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    "change, dtype, reason",
    [
        (None, "bfloat16", "needs a dtype conversion"),
        (_stale_rotary_buffers, None, "rotary_emb.inv_freq' is not one that LlamaForCausalLM saves"),
        (_old_transformers_config, None, "from transformers 4.57.1"),
        (_tied_head_saved_anyway, None, "does not match tie_word_embeddings"),
        (_student_layer_missing_a_tensor, None, "layers do not all hold the same tensors"),
    ],
    ids=["dtype", "stale-buffers", "old-config", "tied-head-saved", "missing-tensor"],
)
def test_fallback_to_the_transformers_path(tmp_path, change, dtype, reason):
    teacher, student, lm = make_pair("llama", tie=True)
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    if change is not None:
        change(t_dir, s_dir)
    with pytest.raises(NotFast, match=reason):
        FastBuilder.create(t_dir, s_dir, dtype=dtype)
    assert FastBuilder.open(t_dir, s_dir, dtype=dtype) is None
    assert isinstance(open_builder(t_dir, s_dir, dtype=dtype), StreamBuilder)
    # [2]: the student's broken layer is replaced by its teacher block
    patched = [2] if change is _student_layer_missing_a_tensor else [1, 3]
    memory_build(t_dir, s_dir, tmp_path / "ref", patched, lm, dtype=dtype)
    stream_build(t_dir, s_dir, tmp_path / "out", patched=patched, dtype=dtype)
    assert same_files(tmp_path / "ref", tmp_path / "out") == []


def test_bert_teacher_is_not_fast(tmp_path):
    bert = make_teacher("bert", n_layers=6)
    lm = B.LayerMap.from_kept([0, 2, 4, 5], 6)
    t_dir, s_dir = save_pair(tmp_path, bert, make_student(bert, lm), lm)
    with pytest.raises(NotFast, match="no saved layout"):
        FastBuilder.create(t_dir, s_dir)


def test_output_tokenizer_is_the_teachers(saved_llama):
    tmp, t_dir, s_dir, _lm = saved_llama
    stream_build(t_dir, s_dir, tmp / "out", patched=[1], fast=True)
    # tokenizer + generation config
    assert same_files(t_dir, tmp / "out") == [
        "config.json",
        "model.safetensors",
    ]
    text = "w4 w17 </s> w95 nonsense <s> w5"
    a, b = B.load_tokenizer(t_dir), B.load_tokenizer(tmp / "out")
    assert a(text)["input_ids"] == b(text)["input_ids"] and a.decode(a(text)["input_ids"]) == b.decode(
        b(text)["input_ids"]
    )
    assert (a.bos_token, a.eos_token, a.pad_token) == (b.bos_token, b.eos_token, b.pad_token)


def test_cli_build_imports_neither_torch_nor_transformers(saved_llama, capsys):
    tmp, t_dir, s_dir, _lm = saved_llama
    args = ["build", "--teacher", str(t_dir), "--student", str(s_dir), "-k", "2"]
    code = (
        "import sys\n"
        "import boomerang\n"
        "from boomerang.cli.app import run\n"
        f"assert run({[*args, '--out', str(tmp / 'cli')]!r}) == 0\n"
        f"boomerang.stream_build({str(t_dir)!r}, {str(s_dir)!r}, {str(tmp / 'api')!r}, num_patched=2)\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    fast_line = " ".join(done.stdout.split())
    assert run([*args, "--out", str(tmp / "mem"), "--no-stream"]) == 0
    memory_line = " ".join(capsys.readouterr().out.split())
    assert "(streamed)" in fast_line and "(built in memory)" in memory_line
    # the summary's parameter counts (from tensor shapes) are count_params' numbers for the built model
    assert (
        fast_line.split("parameters")[0].split("]),")[1] == memory_line.split("parameters")[0].split("]),")[1]
    )
    assert same_files(tmp / "mem", tmp / "cli") == [] and same_files(tmp / "mem", tmp / "api") == []
