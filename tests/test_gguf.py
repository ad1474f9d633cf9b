"""GGUF export (issue 25): every supported architecture round-trips through `boomerang convert` (transformers' GGUF
reader) with equal f32 tensors, the member's own layer count and the same tokenizer; other weight types hold the
values to their precision; unsupported inputs are refused before anything is written."""

import json

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file
from tiny import (
    BPE_SPECIALS,
    BPE_TEXT,
    CHAT_TEMPLATE,
    GGUF_CASES,
    LLAMA3_SPLIT,
    QWEN_SPLIT,
    make_pair,
    save_bpe_pair,
    save_pair,
    tiny_bpe_tokenizer,
    tiny_tokenizer,
)
from transformers import AutoTokenizer

from boomerang.cli.app import run
from boomerang.errors import BoomerangError
from boomerang.family import load_family
from boomerang.io.gguf_export import check_config, export_gguf, gguf_name
from boomerang.io.gguf_vocab import read_tokenizer_json, read_vocab


def field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.parametrize("arch", list(GGUF_CASES))
def test_family_gguf_round_trips_through_convert(tmp_path, arch):
    split, pre, gguf_arch = GGUF_CASES[arch]
    # transformers' GGUF reader takes Qwen3's head size as 128 (real Qwen3 models' size), whatever the file's
    # qwen3.attention.key_length says; llama.cpp reads it (tests/test_llamacpp.py runs head size 8)
    over = {"head_dim": 128} if arch == "qwen3" else {}
    t_dir, s_dir = save_bpe_pair(tmp_path, arch, split, **over)
    out = tmp_path / "fam"
    args = ["family", "--teacher", str(t_dir), "--student", str(s_dir), "--out", str(out), "--sizes", "0,2,4"]
    assert run([*args, "--format", "gguf", "--gguf-type", "f32"]) == 0
    manifest = load_family(out)
    assert manifest["formats"] == ["safetensors", "gguf"] and manifest["gguf_type"] == "f32"
    vocab = read_tokenizer_json(t_dir)
    tokens = {i: t for t, i in vocab["model"]["vocab"].items()} | {
        a["id"]: a["content"] for a in vocab["added_tokens"]
    }
    for row in manifest["members"]:
        member = out / row["dir"]
        path = out / row["gguf"]["file"]
        assert row["gguf"] == {
            "file": f"gguf/{gguf_name(row['dir'], 'f32')}",
            "type": "f32",
            "bytes": path.stat().st_size,
        }
        reader = gguf.GGUFReader(path)
        assert field(reader, "general.architecture") == gguf_arch
        assert field(reader, f"{gguf_arch}.block_count") == row["n_layers"]
        assert field(reader, "tokenizer.ggml.model") == "gpt2" and field(reader, "tokenizer.ggml.pre") == pre
        assert field(reader, "tokenizer.ggml.tokens") == [tokens[i] for i in range(len(tokens))]
        assert (
            field(reader, "tokenizer.ggml.bos_token_id") == 1
            and field(reader, "tokenizer.ggml.eos_token_id") == 2
        )
        assert field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE
        assert len(field(reader, "tokenizer.ggml.merges")) == len(vocab["model"]["merges"])
        if arch == "gemma3_text":  # the member's own sliding/full pattern, not the teacher's period
            layer_types = json.loads((member / "config.json").read_text())["layer_types"]
            pattern = field(reader, "gemma3.attention.sliding_window_pattern")
            assert pattern == [t == "sliding_attention" for t in layer_types]

        back = tmp_path / f"back-{row['K']}"
        assert run(["convert", str(path), "--out", str(back)]) == 0
        want, got = load_file(member / "model.safetensors"), load_file(back / "model.safetensors")
        assert sorted(got) == sorted(want)
        for name, value in want.items():
            if arch == "gemma3_text" and name.endswith("norm.weight"):
                # stored as 1 + w (llama.cpp's Gemma norm) and read back as (1 + w) - 1: rounding only
                np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-7)
            else:
                assert np.array_equal(got[name], value), name
        assert json.loads((back / "config.json").read_text())["num_hidden_layers"] == row["n_layers"]
        if arch == "gemma3_text":
            # transformers loads a Gemma 3 file's tokenizer into its GemmaTokenizer class (sentencepiece-style), which
            # mis-reads a byte-level vocabulary; the file's own tokens and merges are checked above, and
            # tests/test_llamacpp.py checks that llama.cpp tokenizes with them as transformers does
            continue
        before, after = AutoTokenizer.from_pretrained(member), AutoTokenizer.from_pretrained(back)
        assert after.get_vocab() == before.get_vocab()
        assert after(BPE_TEXT).input_ids == before(BPE_TEXT).input_ids
        assert (
            (after.bos_token_id, after.eos_token_id) == (before.bos_token_id, before.eos_token_id) == (1, 2)
        )


def test_weight_types_keep_values_to_their_precision(tmp_path):
    t_dir, _ = save_bpe_pair(tmp_path, "llama", tie=True)
    weights = load_file(t_dir / "model.safetensors")
    q8 = gguf.GGMLQuantizationType
    for kind, qtype, tol in (("f16", q8.F16, 1e-3), ("bf16", q8.BF16, 8e-3), ("q8_0", q8.Q8_0, 1e-2)):
        done = export_gguf(t_dir, tmp_path / f"t.{kind}.gguf", type=kind)
        assert done.n_layers == 6 and done.type == kind
        reader = gguf.GGUFReader(done.path)
        by_name = {t.name: t for t in reader.tensors}
        assert "output.weight" not in by_name  # tied: llama.cpp reuses the token embedding
        for t in reader.tensors:
            assert t.tensor_type == (q8.F32 if len(t.shape) == 1 else qtype), t.name
        for gguf_key, key in (
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight"),
        ):
            t = by_name[gguf_key]
            values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(weights[key].shape)
            scale = np.abs(weights[key]).max()
            assert np.abs(values - weights[key]).max() <= tol * scale, (kind, gguf_key)
        assert field(reader, "general.file_type") == {"f16": 1, "bf16": 32, "q8_0": 7}[kind]


def test_q8_0_falls_back_to_f16_for_rows_that_are_not_whole_blocks(tmp_path):
    t_dir, _ = save_bpe_pair(tmp_path, "qwen2", QWEN_SPLIT, intermediate_size=48)  # down_proj rows: 48 values
    reader = gguf.GGUFReader(export_gguf(t_dir, tmp_path / "q.gguf", type="q8_0").path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0


def test_build_writes_one_gguf_file_with_force_rules(tmp_path, capsys):
    t_dir, s_dir = save_bpe_pair(tmp_path, "qwen3", QWEN_SPLIT)
    out = tmp_path / "member.gguf"
    args = [
        "build",
        "--teacher",
        str(t_dir),
        "--student",
        str(s_dir),
        "-k",
        "3",
        "--out",
        str(out),
        "--format",
        "gguf",
    ]
    assert run(args) == 0
    reader = gguf.GGUFReader(out)
    # f16 by default
    assert field(reader, "qwen3.block_count") == 5 and field(reader, "general.file_type") == 1
    # no scratch left
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "member.gguf",
        "student",
        "teacher",
    ]
    before = out.read_bytes()
    assert run(args) == 2 and "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert run([*args, "--force", "--gguf-type", "q8_0"]) == 0
    assert field(gguf.GGUFReader(out), "general.file_type") == 7


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "gguf", "--gguf-type", "q4_k"], "--gguf-type 'q4_k' is not one of"),
        (["--gguf-type", "f16"], "--gguf-type is read only with --format gguf"),
        (["--format", "onnx"], "--format 'onnx' is not one of"),
    ],
)
def test_bad_format_options_fail_before_any_work(tmp_path, capsys, extra, message):
    t_dir, s_dir = save_bpe_pair(tmp_path, "llama")
    out = tmp_path / "fam"
    assert run(["family", "--teacher", str(t_dir), "--student", str(s_dir), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_build_gguf_needs_a_gguf_file_name(tmp_path, capsys):
    t_dir, s_dir = save_bpe_pair(tmp_path, "llama")
    args = ["build", "--teacher", str(t_dir), "--student", str(s_dir), "-k", "1", "--format", "gguf"]
    assert run([*args, "--out", str(tmp_path / "member")]) == 2
    assert "ending in .gguf" in capsys.readouterr().err and not (tmp_path / "member").exists()


def test_unsupported_architecture_is_refused_before_writing(tmp_path, capsys):
    teacher, student, lm = make_pair("gpt2")
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    out = tmp_path / "fam"
    args = ["family", "--teacher", str(t_dir), "--student", str(s_dir), "--out", str(out), "--format", "gguf"]
    assert run(args) == 2
    err = capsys.readouterr().err
    assert "cannot write a gpt2 model as GGUF" in err and "gemma3_text, llama, mistral, qwen2, qwen3" in err
    assert not out.exists()


def test_unsupported_tokenizer_is_refused_before_writing(tmp_path, capsys):
    teacher, student, lm = make_pair("llama")
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)  # a WordLevel tokenizer
    out = tmp_path / "fam"
    args = ["family", "--teacher", str(t_dir), "--student", str(s_dir), "--out", str(out), "--format", "gguf"]
    assert run(args) == 2
    assert "cannot write the tokenizer" in capsys.readouterr().err and not out.exists()
    assert run(args[:-2]) == 0  # safetensors only: fine


def test_pre_tokenizer_names(tmp_path):
    cases = {None: "gpt-2", QWEN_SPLIT: "qwen2", LLAMA3_SPLIT: "llama3"}
    for split, name in cases.items():
        tiny_bpe_tokenizer(tmp_path / "tok", split=split)
        assert read_vocab(tmp_path / "tok", 400).pre == name
    data = read_tokenizer_json(tmp_path / "tok")
    # SmolLM's own tokenizer
    data["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        ],
    }
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(data))
    vocab = read_vocab(tmp_path / "tok", 400)
    assert vocab.pre == "smollm" and vocab.tokens[301:] == [f"[PAD{i}]" for i in range(301, 400)]
    assert vocab.tokens[:3] == list(BPE_SPECIALS) and vocab.types[:3] == [gguf.TokenType.CONTROL] * 3
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(BoomerangError, match="Metaspace"):
        read_vocab(tmp_path / "tok", 400)
    with pytest.raises(BoomerangError, match="only 200 rows"):
        tiny_bpe_tokenizer(tmp_path / "tok")
        read_vocab(tmp_path / "tok", 200)
    tiny_tokenizer(tmp_path / "word")
    with pytest.raises(BoomerangError, match="WordLevel tokenizer"):
        read_vocab(tmp_path / "word", 96)


def test_configs_llama_cpp_would_compute_differently_are_refused():
    from tiny import tiny_config

    gemma = tiny_config("gemma3_text").to_dict()
    assert check_config(gemma) == []
    with pytest.raises(BoomerangError, match="query_pre_attn_scalar=16"):
        check_config({**gemma, "query_pre_attn_scalar": 16})
    llama = tiny_config("llama").to_dict()
    with pytest.raises(BoomerangError, match="activation 'gelu'"):
        check_config({**llama, "hidden_act": "gelu"})
    with pytest.raises(BoomerangError, match="rope scaling 'longrope'"):
        check_config({**llama, "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}})
    qwen = tiny_config("qwen2").to_dict()  # sliding layers: llama.cpp's qwen2 graph attends to everything
    (note,) = check_config(qwen)
    assert "no sliding-window attention" in note and "4 tokens" in note


def test_family_gguf_export_resumes_after_a_kill(tmp_path):
    """Killed while writing the third member's GGUF file: the rerun keeps the two finished files (and the members),
    writes the other three, and the family is byte-identical to an uninterrupted export."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from boomerang.io import gguf_export

    t_dir, s_dir = save_bpe_pair(tmp_path, "llama")
    out, fresh = tmp_path / "fam", tmp_path / "fresh"
    argv = ["family", "--teacher", str(t_dir), "--student", str(s_dir), "--format", "gguf", "--out"]
    code = f"""
import os, signal, sys
import boomerang.io.gguf_export as g
real, done = g.write_plan, []
def write_plan(*a, **k):
    if len(done) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    done.append(1)
    return real(*a, **k)
g.write_plan = write_plan
from boomerang.cli.app import run
sys.exit(run({[*argv, str(out)]!r}))
"""
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": f"{tests.parent}{os.pathsep}{tests}", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL and not out.exists()
    real, calls = gguf_export.write_plan, []
    gguf_export.write_plan = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        assert run([*argv, str(out)]) == 0
    finally:
        gguf_export.write_plan = real
    assert len(calls) == 3
    assert run([*argv, str(fresh)]) == 0

    def files(d):
        return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}

    a, b = files(out), files(fresh)
    assert sorted(a) == sorted(b) and sum(k.endswith(".gguf") for k in a) == 5
    assert [k for k in a if a[k] != b[k]] == []
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
