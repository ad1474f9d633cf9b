"""Paper parity details (issue 14 §1): BOS per teacher, the student's recorded patch order as the default."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny import ids, make_pair, save_pair, tiny_corpus, tiny_tokenizer
from transformers import AutoTokenizer

import boomerang as B
from boomerang.cli.app import run
from boomerang.core.plan import recorded_order_name
from boomerang.data.blocks import docs_to_blocks, tokenize
from boomerang.io.order_files import load_order
from boomerang.train.recipe import load_recipe

# Whether each paper teacher's tokenizer puts a BOS first when called with its default special tokens, as the
# reference code (dcml-lab/boomerang-distillation, train/train.py) calls it: Llama 3's tokenizer.json post-processor
# adds <|begin_of_text|>; Qwen3's and Pythia's (GPT-NeoX) add nothing.
DEFAULT_BOS = {
    "meta-llama/Llama-3.2-3B": True,
    "Qwen/Qwen3-4B-Base": False,
    "Qwen/Qwen3-8B-Base": False,
    "EleutherAI/pythia-2.8b": False,
}
RECIPES = Path(B.__file__).parent / "recipes"
TEXTS = ["It is a truth universally acknowledged.", "  Leading spaces, digits 1234 and émigré.", "x"]

# ---- BOS ------------------------------------------------------------------------------------------------------


def test_paper_recipes_add_bos_as_the_reference_tokenises():
    paper = [load_recipe(path) for path in sorted(RECIPES.glob("*.yaml")) if path.stem != "smollm2-cpu"]
    assert sorted(r.teacher for r in paper) == sorted(DEFAULT_BOS)
    for r in paper:
        assert r.data.add_bos is DEFAULT_BOS[r.teacher], r.name


def _llama_style(src, out):
    """The SmolLM2 tokenizer files with Llama 3's post-processor: BOS first under the default special tokens."""
    out.mkdir()
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    data = json.loads((out / "tokenizer.json").read_text())
    bos = B.load_tokenizer(src).bos_token
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [B.load_tokenizer(src).bos_token_id], "tokens": [bos]}},
    }  # fmt: skip
    (out / "tokenizer.json").write_text(json.dumps(data))
    return AutoTokenizer.from_pretrained(out)


@pytest.mark.real
def test_tokenisation_matches_the_reference_with_the_real_smollm2_tokenizer(real_teacher_dir, tmp_path):
    """Our documents equal the reference's ``tokenizer(text)["input_ids"]``: with the real SmolLM2 files (no
    default BOS, so the smollm2-cpu recipe's add_bos=false), and with the same files given Llama 3's BOS
    post-processor (then add_bos=true is what matches, and add_bos=false would not)."""
    tok = B.load_tokenizer(real_teacher_dir)
    reference = [tok(t)["input_ids"] for t in TEXTS]
    assert load_recipe(RECIPES / "smollm2-cpu.yaml").data.add_bos is False
    assert list(tokenize(TEXTS, tok, add_bos=False)) == reference
    assert all(r[0] != tok.bos_token_id for r in reference)

    llama = _llama_style(real_teacher_dir, tmp_path / "llama-style")
    reference = [llama(t)["input_ids"] for t in TEXTS]
    assert all(r[0] == llama.bos_token_id for r in reference)
    assert list(tokenize(TEXTS, llama, add_bos=True)) == reference
    assert list(tokenize(TEXTS, llama, add_bos=False)) != reference
    # padded blocks (packing: false) start every document with that BOS; packed ones put it after each EOS
    docs = list(tokenize(TEXTS, llama, add_bos=True))
    padded = docs_to_blocks(docs, 16, llama.eos_token_id, packing=False, pad=llama.eos_token_id)
    assert (padded.ids[:, 0] == llama.bos_token_id).all()
    packed = docs_to_blocks(docs, 4, llama.eos_token_id).ids.reshape(-1).tolist()
    flat = [t for d in docs for t in [*d, llama.eos_token_id]][: len(packed)]
    assert packed == flat and flat.count(llama.bos_token_id) == len(TEXTS)


# ---- the student's recorded patch order is the default ------------------------------------------------------


def _first_student(tmp_path=None):
    """A tiny pair whose student records ``patch_order: first`` (as ``init`` writes it for the Llama recipe)."""
    teacher, student, lm = make_pair("llama", 6, kept=(0, 2, 4, 5))
    student.config.boomerang = {**student.config.boomerang, "patch_order": "first"}
    dirs = save_pair(tmp_path, teacher, student) if tmp_path is not None else (None, None)
    return teacher, student, lm, *dirs


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


def test_recorded_order_name_reads_the_student_config():
    assert recorded_order_name({"boomerang": {"role": "student", "patch_order": "first"}}) == "first"
    assert recorded_order_name({"boomerang": {"role": "student"}}) == "last"
    assert recorded_order_name({"boomerang": {"patch_order": "sideways"}}) == "last"
    assert recorded_order_name({}) == "last"
    teacher, student, _lm, *_ = _first_student()
    assert recorded_order_name(student.config) == "first" and recorded_order_name(teacher.config) == "last"


def test_python_entry_points_default_to_the_students_order(tmp_path):
    teacher, student, lm, t_dir, s_dir = _first_student(tmp_path)
    x = ids()
    first2 = B.patch(teacher, student, lm, [0, 1])
    last2 = B.patch(teacher, student, lm, [2, 3])
    # B.patch: recorded order by default, an explicit order wins
    assert torch.equal(_logits(B.patch(teacher, student, num_patched=2), x), _logits(first2, x))
    assert torch.equal(
        _logits(B.patch(teacher, student, num_patched=2, order=B.resolve_order("last", lm)), x),
        _logits(last2, x),
    )
    # Family (in memory and from paths)
    fam = B.Family(teacher, student)
    assert fam.default_order.name == "first" and fam.plan(2).patched == (0, 1)
    assert B.Family(teacher, student, order="last").plan(2).patched == (2, 3)
    assert B.Family(t_dir, s_dir).default_order.name == "first"
    # export_family, streamed and in memory
    for stream in (True, False):
        out = tmp_path / f"fam-{stream}"
        B.export_family(t_dir, s_dir, out, sizes=[1, 2], stream=stream)
        manifest = json.loads((out / "family.json").read_text())
        assert manifest["order"]["name"] == "first"
        assert [r["patched_student_layers"] for r in manifest["members"]] == [[0], [0, 1]]
        B.export_family(t_dir, s_dir, tmp_path / f"last-{stream}", sizes=[1], stream=stream, order="last")
        assert load_order(tmp_path / f"last-{stream}" / "order.json").name == "last"
    # stream_build (fast and streaming builders)
    for fast in (True, False):
        out = tmp_path / f"built-{fast}"
        B.stream_build(t_dir, s_dir, out, num_patched=2, fast=fast)
        assert json.loads((out / "config.json").read_text())["boomerang"]["patched_student_layers"] == [0, 1]
    B.stream_build(t_dir, s_dir, tmp_path / "built-last", num_patched=2, order=B.resolve_order("last", lm))
    assert json.loads((tmp_path / "built-last" / "config.json").read_text())["boomerang"]["order"] == "last"


def test_sweep_defaults_to_the_students_order(tmp_path):
    from boomerang.pipelines.sweep import EvalSpec, sweep

    teacher, student, _lm, *_ = _first_student()
    text = tiny_corpus(tmp_path / "text", n_docs=3, words=(60, 80))
    spec = EvalSpec(context=24, stride=12, max_tokens=48, batch_size=2)
    opts = dict(tokenizer=tiny_tokenizer(), spec=spec, sizes=[1, 2])
    result = sweep(teacher, student, str(text), tmp_path / "s", **opts)
    assert result["order"]["name"] == "first" and [r["patched"] for r in result["rows"]] == [[0], [0, 1]]
    result = sweep(teacher, student, str(text), tmp_path / "s2", order="last", **opts)
    assert result["order"]["name"] == "last" and [r["patched"] for r in result["rows"]] == [[3], [2, 3]]


def test_cli_entry_points_default_to_the_students_order(tmp_path, capsys):
    _teacher, _student, _lm, t_dir, s_dir = _first_student(tmp_path)
    pair = ["--teacher", str(t_dir), "--student", str(s_dir)]

    def patched(path):
        return json.loads((path / "config.json").read_text())["boomerang"]["patched_student_layers"]

    for stream in ("--stream", "--no-stream"):
        assert run(["build", *pair, "-k", "2", stream, "--out", str(tmp_path / f"b{stream}")]) == 0
        assert patched(tmp_path / f"b{stream}") == [0, 1]
    assert run(["build", *pair, "-k", "2", "--order", "last", "--out", str(tmp_path / "bl")]) == 0
    assert patched(tmp_path / "bl") == [2, 3]
    assert run(["family", *pair, "--sizes", "1,2", "--out", str(tmp_path / "f")]) == 0
    assert load_order(tmp_path / "f" / "order.json").name == "first"
    assert run(["family", *pair, "--sizes", "1", "--order", "last", "--out", str(tmp_path / "fl")]) == 0
    assert load_order(tmp_path / "fl" / "order.json").name == "last"
    text = tiny_corpus(tmp_path / "text", n_docs=3, words=(60, 80))
    sweep = ["sweep", *pair, "--data", str(text), "--sizes", "1,2", "--context", "24", "--max-tokens", "48"]
    assert run([*sweep, "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "results.json").read_text())["order"]["name"] == "first"
    assert run([*sweep, "--order", "last", "--out", str(tmp_path / "sl")]) == 0
    assert json.loads((tmp_path / "sl" / "results.json").read_text())["order"]["name"] == "last"
    capsys.readouterr()
    assert run(["info", str(s_dir)]) == 0
    assert "family (first order)" in capsys.readouterr().out
    assert run(["info", str(s_dir), "--order", "last"]) == 0
    assert "family (last order)" in capsys.readouterr().out


# ---- lm-eval: generation defaults and the paper's task suites ------------------------------------------------

GEN_TOKS = 6


def _generate_task(folder):
    """A local generate_until task whose metric is the number of generated words (a word-level tokenizer: one
    word per token), so the metric shows how many tokens lm-eval actually let the model generate."""
    folder.mkdir()
    rows = [{"prompt": f"w{4 + i} w{20 + i} w{40 + i}"} for i in range(3)]
    (folder / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "utils.py").write_text(
        "def process_results(doc, results):\n    return {'words': len(results[0].split())}\n"
    )
    (folder / "gen.yaml").write_text(
        f"""task: boomerang_test_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "gen.jsonl"}
output_type: generate_until
test_split: test
doc_to_text: "{{{{prompt}}}}"
doc_to_target: ""
generation_kwargs:
  until: ["ZZZ"]
  max_gen_toks: {GEN_TOKS}
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: words
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
    )
    return folder / "gen.yaml"


def _chatty_model():
    """A tiny model carrying generation defaults like an instruct checkpoint's (short max_new_tokens, sampling
    temperature and top_p). Special tokens are suppressed, so every generated token is a word and greedy generation
    runs to whatever length limit applies."""
    from tiny import make_teacher

    model = make_teacher("llama", 2)
    model.generation_config.suppress_tokens = [0, 1, 2, 3]  # pad, BOS, EOS, unk
    model.generation_config.max_new_tokens = 2
    model.generation_config.temperature = 0.7
    model.generation_config.top_p = 0.9
    return model


def test_generate_until_uses_lm_evals_length_not_the_checkpoints(tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from boomerang.evaluate.lmeval import run_lm_eval

    task = _generate_task(tmp_path / "tasks")
    model, tok = _chatty_model(), tiny_tokenizer()
    # lm-eval alone, on the checkpoint's defaults: transformers lets max_new_tokens=2 win over lm-eval's length
    plain = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=2, device="cpu"),
        tasks=["boomerang_test_generate"],
        task_manager=TaskManager(include_path=[str(task.parent)], include_defaults=False),
        bootstrap_iters=0,
    )
    assert plain["results"]["boomerang_test_generate"]["words,none"] == 2
    # ours clears them for the run, as the reference does, so lm-eval's max_gen_toks applies ...
    got = run_lm_eval(model, tok, [str(task)], batch_size=2)
    assert got["boomerang_test_generate"]["words"] == GEN_TOKS
    # ... and leaves the model's generation config as it was
    cfg = model.generation_config
    assert (cfg.max_new_tokens, cfg.temperature, cfg.top_p) == (2, 0.7, 0.9)


def test_paper_task_presets_expand_offline(tmp_path):
    from boomerang.evaluate.lmeval import PRESETS, expand_presets, resolve_tasks

    classification = [
        "arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "winogrande", "race", "mmlu", "rte",
    ]  # fmt: skip
    generation = ["gsm8k_cot", "ifeval", "hendrycks_math"]
    assert expand_presets(["paper-classification"]) == classification
    assert expand_presets(["paper-perplexity"]) == ["wikitext"]
    assert expand_presets(["paper-generation"]) == generation
    assert expand_presets(["paper"]) == [*classification, "wikitext", *generation]
    assert set(PRESETS) == {"paper", "paper-classification", "paper-perplexity", "paper-generation"}
    # mixed with other names, each task once, in order
    assert expand_presets(["boomerang_cloze", "paper-generation", "ifeval", " wikitext "]) == [
        "boomerang_cloze", *generation, "wikitext",
    ]  # fmt: skip
    # validation knows every expanded name from lm-eval's installed task files (no network, no dataset download)
    names, paths, needs_defaults = resolve_tasks(["paper", "boomerang_wordppl"])
    assert names == [*classification, "wikitext", *generation, "boomerang_wordppl"]
    assert needs_defaults and paths == []
    with pytest.raises(B.BoomerangError, match="paper-classification"):
        resolve_tasks(["paper-clasification"])  # a typo is answered with the preset's name
