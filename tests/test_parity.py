"""Paper parity details (issue 14 §1): BOS per teacher, the student's recorded patch order as the default."""

import json
import shutil

import pytest
from transformers import AutoTokenizer

import boomerang as B
from boomerang.data.blocks import docs_to_blocks, tokenize
from boomerang.train.recipe import load_recipe, packaged_recipes

# Whether each paper teacher's tokenizer puts a BOS first when called with its default special tokens, as the
# reference code (dcml-lab/boomerang-distillation, train/train.py) calls it: Llama 3's tokenizer.json post-processor
# adds <|begin_of_text|>; Qwen3's and Pythia's (GPT-NeoX) add nothing.
DEFAULT_BOS = {
    "meta-llama/Llama-3.2-3B": True,
    "Qwen/Qwen3-4B-Base": False,
    "Qwen/Qwen3-8B-Base": False,
    "EleutherAI/pythia-2.8b": False,
}
TEXTS = ["It is a truth universally acknowledged.", "  Leading spaces, digits 1234 and émigré.", "x"]

# ---- BOS ------------------------------------------------------------------------------------------------------


def test_paper_recipes_add_bos_as_the_reference_tokenises():
    paper = [load_recipe(name) for name in packaged_recipes() if name != "smollm2-cpu"]
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
    assert load_recipe("smollm2-cpu").data.add_bos is False
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
