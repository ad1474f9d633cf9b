"""The memory plan (boomerang.train.memory): parameter counts and activations against real models, hand-computed
plans, sharding divisions, fit decisions, and config-only planning of unknown models."""

import contextlib
import json

import pytest
import torch
from tiny import DECODERS, make_teacher

from boomerang.core.hooks import layer_list
from boomerang.core.layermap import LayerMap
from boomerang.errors import BoomerangError
from boomerang.train import memory as M
from boomerang.train.lean import lean_mlps
from boomerang.train.losses import DistillLoss
from boomerang.train.recipe import parse_recipe

GB = 10**9


def _unique_numel(params) -> int:
    seen, n = set(), 0
    for p in params:
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            n += p.numel()
    return n


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("tie", [False, True])
def test_parameter_counts_match_real_models(arch, tie):
    model = make_teacher(arch, 3, tie=tie)
    shape = M.ModelShape.from_config(model.config.to_dict())
    assert not shape.guessed
    assert shape.params == _unique_numel(model.parameters())
    assert shape.layer_params == sum(p.numel() for p in layer_list(model)[0].parameters())
    assert shape.tied == (model.get_output_embeddings().weight is model.get_input_embeddings().weight)


# ---- activations: the estimate against what autograd really saves -------------------------------------------

B, S = 3, 40  # leading dims that no weight has, so saved weight copies are told apart from activations
ACT_KW = dict(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2)


def _saved_activation_bytes(model, mode: str) -> float:
    """Bytes per token autograd saves for one decoder layer (the middle one of three)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    layer = layer_list(model)[1]
    active = [False]

    def pack(t):
        s = t.untyped_storage()
        if active[0] and s.data_ptr() not in params and t.dim() and t.shape[0] in (B, B * S):
            seen[s.data_ptr()] = s.nbytes()
        return t

    layer.register_forward_pre_hook(lambda *_: active.__setitem__(0, True))
    layer.register_forward_hook(lambda *_: active.__setitem__(0, False))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast" else contextlib.nullcontext()
    ids = torch.randint(4, 90, (B, S))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        model.base_model(input_ids=ids, use_cache=False)
    return sum(seen.values()) / (B * S)


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("mode", ["fp32", "autocast", "bf16"])
def test_layer_activations_match_autograd(arch, mode):
    kw = dict(ACT_KW)
    if arch == "gpt2":
        kw = dict(n_embd=64, n_inner=160, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if arch in ("qwen2", "qwen3", "mistral", "gemma3_text"):  # full attention in every layer
        kw.update(sliding_window=None, use_sliding_window=False)
        if arch == "gemma3_text":
            kw.update(layer_types=["full_attention"] * 3, head_dim=16, sliding_window=1024)
    model = make_teacher(arch, 3, **kw).train()
    if mode == "bf16":
        model = model.bfloat16()
    shape = M.ModelShape.from_config(model.config.to_dict())
    for lean in (False, True):
        undo = lean_mlps(list(layer_list(model))) if lean else (lambda: None)
        got = _saved_activation_bytes(model, mode)
        undo()
        want = shape.layer_activations(mode, lean_mlp=lean)
        assert want == pytest.approx(got, rel=0.015), (arch, mode, lean, want, got)


# ---- whole plans, by hand -------------------------------------------------------------------------------------

SMALL = {  # a Llama small enough to count by hand
    "model_type": "llama",
    "hidden_size": 4,
    "intermediate_size": 8,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_hidden_layers": 4,
    "vocab_size": 10,
    "tie_word_embeddings": True,
}


def test_small_llama_by_hand():
    t = M.ModelShape.from_config(SMALL)
    # embedding 10·4; per layer q 4·4 + k 4·2 + v 4·2 + o 4·4 + MLP 3·4·8 + 2 norms·4; final norm 4; tied head
    assert (t.embed_params, t.layer_params, t.head_params) == (40, 152, 0)
    assert t.params == 40 + 4 * 152 + 4 == 652
    # fp32, lean MLP, per token: 2 norms × (input 16 + 1/rms 4 + normalised 16) + 2 linear inputs × 16
    # + q, k, v 4·(4 + 2 + 2) + attention output 16 + log-sum-exp 4·2 + gate and up 2·4·8
    assert t.layer_activations("fp32", lean_mlp=True) == 72 + 32 + 32 + 16 + 8 + 64
    assert t.layer_activations("fp32", lean_mlp=False) == 224 + 64
    # autocast: q/k/v and gate/up each cast their input to bf16 (5 copies of 2·4 bytes), the rest in bf16
    assert t.layer_activations("autocast", lean_mlp=True) == 72 + 5 * 8 + 2 * 8 + 2 * 4 + 8 + 32

    s = t.with_layers(2)
    assert s.params == 40 + 2 * 152 + 4 == 348
    run = M.RunShape(micro_batch=1, seq_len=8, bf16=False, chunk_tokens=4, n_pairs=2, teacher_states=2)
    p = M.plan(t, s, run, 1, "ddp")
    c = p.components
    assert c["teacher weights"] == 652 * 4
    assert c["student weights"] == 348 * 4
    assert c["working copies"] == 0
    assert c["gradients"] == 348 * 4  # one process: no DDP buckets
    assert c["optimizer"] == 348 * 8
    # 8 tokens × (2 layers × 224 + final norm 36) + 2 pairs × 8 tokens × 4·4 (fp32 normalised copies)
    assert c["activations"] == 8 * (2 * 224 + 36) + 2 * 8 * 16
    # 3 teacher states of 8 tokens × 4 fp32 + one layer's working set 8 × (3·8 + 4·4) × 4
    assert c["teacher outputs"] == 3 * 8 * 4 * 4 + 8 * (3 * 8 + 4 * 4) * 4
    # head gradient 10·4 fp32 + hidden gradient 8·4 fp32 + 4.25 fp32 buffers of 4 tokens × 10 (2 chunks, KL on)
    assert c["loss buffers"] == 10 * 4 * 4 + 8 * 4 * 4 + 4.25 * 4 * 10 * 4
    one_chunk = M.plan(t, s, M.RunShape(**{**run.__dict__, "chunk_tokens": 8}), 1, "ddp").components
    assert one_chunk["loss buffers"] == 10 * 4 * 4 + 8 * 4 * 4 + 2.5 * 8 * 10 * 4
    assert p.total == sum(c.values())
    # checkpointing keeps each layer's input (4 fp32) and recomputes one layer
    ac = M.plan(t, s, run, 1, "ddp+ac").components["activations"]
    assert ac == 8 * (2 * 4 * 4 + 224 + 36) + 2 * 8 * 16


def test_sharding_divides_what_fsdp_shards():
    t = M.ModelShape.from_config(
        {**SMALL, "num_hidden_layers": 36, "hidden_size": 64, "intermediate_size": 192}
    )
    s = t.with_layers(19)
    run = M.RunShape(micro_batch=2, seq_len=64, bf16=True, n_pairs=19, teacher_states=18)
    one, eight = M.plan(t, s, run, 1, "fsdp").components, M.plan(t, s, run, 8, "fsdp").components
    for key in ("teacher weights", "student weights", "optimizer"):
        assert eight[key] == pytest.approx(one[key] / 8)
    work = max(s.layer_params, s.head_unit_params, s.embed_params) * 6  # one unit's bf16 gradient + fp32 copy
    assert eight["gradients"] - work == pytest.approx((one["gradients"] - work) / 8)
    for key in ("activations", "teacher outputs", "loss buffers", "working copies"):
        assert eight[key] == one[key]
    # DDP replicates everything, and adds its gradient buckets with several processes
    d1, d8 = M.plan(t, s, run, 1, "ddp").components, M.plan(t, s, run, 8, "ddp").components
    assert d8["teacher weights"] == d1["teacher weights"] == t.params * 2
    assert d8["gradients"] == 2 * d1["gradients"] == 2 * s.params * 4
    # FSDP computes in bf16 (no autocast weight copies), checkpointing saves activations
    assert M.plan(t, s, run, 8, "fsdp+ac").components["activations"] < eight["activations"]
    assert M.plan(t, s, run, 8, "fsdp").total < M.plan(t, s, run, 8, "ddp").total


def test_frozen_parts_have_no_gradients_or_optimizer_state():
    t = M.ModelShape.from_config({**SMALL, "tie_word_embeddings": False})
    s = t.with_layers(2)
    full = M.plan(t, s, M.RunShape(1, 8, False), 1, "ddp").components
    frozen = M.plan(t, s, M.RunShape(1, 8, False, trainable_embed=False, trainable_head=False), 1, "ddp")
    assert full["optimizer"] - frozen.components["optimizer"] == (40 + 40) * 8
    assert frozen.components["loss buffers"] < full["loss buffers"]  # no head gradient


def test_fit_decisions_keep_a_reserve():
    t = M.ModelShape.from_config(SMALL)
    p = M.plan(t, t.with_layers(2), M.RunShape(1, 8, False), 1, "ddp")
    assert p.fits is None
    cap = 100 * GB
    assert M.usable_memory(cap) == cap - 10 * GB
    assert M.usable_memory(8 * GB) == 8 * GB - M.RESERVE_MIN
    p.capacity = cap
    assert p.fits is True
    p.components["activations"] += cap - 10 * GB - p.total + 1  # one byte over what may be used
    assert p.fits is False


def test_recipe_models_paper_scale_plans():
    """Qwen3-8B → 19 layers on 8 × 80 GB: DDP cannot hold it, FSDP can."""
    q8 = {
        "model_type": "qwen3",
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "tie_word_embeddings": False,
    }
    t = M.ModelShape.from_config(q8)
    assert t.params == pytest.approx(8.19e9, rel=0.01)
    run = M.RunShape(micro_batch=2, seq_len=2048, bf16=True, n_pairs=20, teacher_states=19)
    got = {p.strategy: p.fits for p in M.plans(t, t.with_layers(19), run, 8, 80 * GB)}
    assert got == {"ddp": False, "ddp+ac": False, "fsdp": True, "fsdp+ac": True}


@pytest.mark.parametrize(
    "loss",
    [
        {},
        {"align_embeddings": True, "align_final": "normed"},
        {"align_final": "both"},
        {"cos": 0},
        {"kl": 0, "align_embeddings": True},
    ],
)
def test_cosine_pairs_match_the_loss(loss):
    recipe = parse_recipe({"teacher": "t", "data": {"train": "d"}, "loss": loss})
    lm = LayerMap.every(12)
    fn = DistillLoss(recipe.loss, lm)
    pairs, teacher_states = M.cosine_pairs(recipe, lm.n_student)
    assert pairs == len(fn.pairs)
    assert teacher_states == len([k for k in fn.keys(1) if k != "norm"])


@pytest.mark.parametrize(
    ("text", "value"),
    [("80GB", 80 * GB), ("80", 80 * GB), ("79.6GiB", int(79.6 * 2**30)), ("24000MiB", 24000 * 2**20)],
)
def test_parse_memory(text, value):
    assert M.parse_memory(text) == value


@pytest.mark.parametrize("text", ["lots", "80 parsecs", "-5GB", "0.5GB", ""])
def test_parse_memory_rejects_nonsense(text):
    with pytest.raises(BoomerangError, match="GB"):
        M.parse_memory(text)


# ---- configs alone ------------------------------------------------------------------------------------------


def test_unknown_model_is_planned_from_its_config_alone(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**SMALL, "model_type": "mystery_lm"}))
    assert not list(tmp_path.glob("*.safetensors"))
    recipe = parse_recipe(
        {"teacher": str(tmp_path), "data": {"train": "d"}, "train": {"micro_batch_size": 1}}
    )
    rp = M.plan_recipe(recipe, 4, 80 * GB)
    assert rp.teacher.guessed and rp.teacher.params == 652
    assert rp.student.layers == LayerMap.every(4).n_student
    assert [p.strategy for p in rp.plans] == list(M.STRATEGIES)
    assert all(p.fits for p in rp.plans)


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(BoomerangError, match=r"no config\.json"):
        M.read_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery_lm", "hidden_size": 4}))
    with pytest.raises(BoomerangError, match="lacks 'num_attention_heads'"):
        M.ModelShape.from_config(M.read_config(str(tmp_path)))
    with pytest.raises(BoomerangError, match="Hub"):  # HF_HUB_OFFLINE=1 in the tests
        M.read_config("nobody/no-such-model")
    with pytest.raises(BoomerangError, match="GGUF"):
        M.read_config(str(tmp_path / "model.gguf"))


# ---- the CLI: boomerang distill RECIPE --dry-run --gpus N [--gpu-memory SIZE] ---------------------------------


def _recipe(tmp_path, **train):
    import yaml

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(
        json.dumps({**SMALL, "model_type": "mystery_lm", "num_hidden_layers": 8})
    )
    recipe = tmp_path / "r.yaml"
    raw = {"name": "plan", "teacher": str(teacher), "data": {"train": str(tmp_path)}, "train": train}
    recipe.write_text(yaml.safe_dump(raw))
    return recipe


def _cli(capsys, argv):
    from boomerang.cli.app import run

    code = run(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out, out.err


def test_cli_prints_the_plan_from_a_config_alone(tmp_path, capsys):
    recipe = _recipe(tmp_path, micro_batch_size=1, gradient_checkpointing=True)
    code, out, err = _cli(
        capsys, ["distill", str(recipe), "--dry-run", "--gpus", "4", "--gpu-memory", "24GiB"]
    )
    assert code == 0, err
    assert "on 4 GPU(s)" in out and "unknown model type" in out
    for column in ("DDP", "FSDP", "checkpointing"):
        assert column in out
    assert "total" in out and "fits" in out
    assert "the recipe as written (DDP + checkpointing) fits" in out


def test_cli_says_when_nothing_fits(tmp_path, capsys):
    recipe = _recipe(tmp_path, micro_batch_size=1)
    code, out, _ = _cli(capsys, ["distill", str(recipe), "--dry-run", "--gpus", "1", "--gpu-memory", "1GiB"])
    assert code == 0
    assert "does not fit" in out and "no strategy fits" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dry-run", "--gpus", "0"], "--gpus must be at least 1"),
        (["--dry-run", "--gpus", "-3"], "--gpus must be at least 1"),
        (["--dry-run", "--gpus", "2", "--gpu-memory", "lots"], "cannot read the memory size"),
        (["--dry-run", "--gpus", "2", "--gpu-memory", "0.2GB"], "less than 1 GiB"),
        (["--gpus", "2"], "add --dry-run"),
    ],
)
def test_cli_bad_gpu_options_exit_2(tmp_path, capsys, args, message):
    code, out, err = _cli(capsys, ["distill", str(_recipe(tmp_path)), *args])
    assert code == 2
    assert message in err and not out
