"""Token perplexity, pseudo-perplexity and `boomerang eval`, against plain reference computations."""

import json
import math

import pytest
import torch
from tiny import ids, make_teacher, save_pair, tiny_tokenizer
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import boomerang as B
from boomerang.cli.app import run
from boomerang.evaluate.perplexity import (
    Document,
    evaluate,
    load_documents,
    perplexity,
    pseudo_perplexity,
    windows,
)


def words(seq):
    return " ".join(f"w{int(i)}" for i in seq)


def doc_text(n, seed=0):
    return words(ids(1, n, seed)[0])


def mlm_tokenizer():
    """A word-level BERT-style tokenizer: [PAD] [CLS] [SEP] [UNK] [MASK], then w5..w95."""
    vocab = {
        "[PAD]": 0,
        "[CLS]": 1,
        "[SEP]": 2,
        "[UNK]": 3,
        "[MASK]": 4,
        **{f"w{i}": i for i in range(5, 96)},
    }
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    )


def token_nll(model, context, target):
    """-log p(target | context) from one plain forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([context])).logits[0, -1].double()
    return -logits.log_softmax(-1)[target].item()


@pytest.fixture(scope="module")
def llama():
    return make_teacher("llama")


def test_perplexity_equals_hand_computation(llama):
    tok = tiny_tokenizer()
    text = doc_text(30)
    seq = tok(text, add_special_tokens=False)["input_ids"]
    res = perplexity(llama, [text], tok, context=64, stride=32)
    with torch.no_grad():
        logp = llama(torch.tensor([seq])).logits[0].double().log_softmax(-1)
    nll = -sum(logp[p - 1, seq[p]].item() for p in range(1, len(seq)))
    assert res.scored == len(seq) - 1  # the first token has no context
    assert res.value == pytest.approx(math.exp(nll / (len(seq) - 1)), rel=1e-6)
    assert res.nll == pytest.approx(nll / (len(seq) - 1), rel=1e-6)

    # with BOS: the first text token is scored given BOS; with EOS: EOS is scored last
    both = perplexity(llama, [text], tok, context=64, stride=32, add_bos=True, add_eos=True)
    full = [tok.bos_token_id, *seq, tok.eos_token_id]
    with torch.no_grad():
        logp = llama(torch.tensor([full])).logits[0].double().log_softmax(-1)
    nll = -sum(logp[p - 1, full[p]].item() for p in range(1, len(full)))
    assert both.scored == len(seq) + 1
    assert both.value == pytest.approx(math.exp(nll / both.scored), rel=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("context,stride", [(10, 3), (8, 7), (12, 1)])
def test_sliding_window_equals_brute_force(arch, context, stride):
    model = make_teacher(arch)
    tok = tiny_tokenizer()
    texts = [doc_text(29, seed=1), doc_text(9, seed=2)]
    res = perplexity(model, texts, tok, context=context, stride=stride, batch_size=3)
    total, count = 0.0, 0
    for text in texts:
        seq = tok(text, add_special_tokens=False)["input_ids"]
        for begin, end, first in windows(len(seq), context, stride):
            for p in range(first, end):  # each target on its own, with exactly its window's left context
                total += token_nll(model, seq[begin:p], seq[p])
                count += 1
    assert res.scored == count == sum(len(t.split()) - 1 for t in texts)
    assert res.nll * res.scored == pytest.approx(total, rel=1e-5)


def test_windows_score_every_token_once_with_bounded_context():
    for n in (1, 2, 5, 17, 40):
        for context in (2, 3, 8, 16):
            for stride in range(1, context):
                got = []
                for begin, end, first in windows(n, context, stride):
                    assert end - begin <= context and begin < first
                    for p in range(first, end):
                        got.append(p)
                        assert p - begin <= context - 1  # at most context-1 tokens of left context
                        if begin > 0:
                            # and at least context-stride after the first
                            assert p - begin >= context - stride
                assert got == list(range(1, n))


def test_documents_are_never_glued(llama):
    tok = tiny_tokenizer()
    a, b = doc_text(20, 3), doc_text(15, 4)
    both = perplexity(llama, [a, b], tok, context=8, stride=4)
    one, two = (perplexity(llama, [t], tok, context=8, stride=4) for t in (a, b))
    assert both.scored == one.scored + two.scored == 33
    assert both.nll * both.scored == pytest.approx(one.nll * one.scored + two.nll * two.scored, rel=1e-6)
    assert [d.name for d in both.docs] == ["text#0", "text#1"]
    assert both.docs[0].ppl == pytest.approx(one.value, rel=1e-6)


def test_exact_slice_over_a_folder(tmp_path):
    tok = tiny_tokenizer()
    (tmp_path / "a.txt").write_text(words(range(10, 20)))  # 10 tokens
    (tmp_path / "b.txt").write_text(words(range(30, 60)))  # 30 tokens
    docs = load_documents(tmp_path, tok, offset=12, max_tokens=5)
    assert [(d.name, d.offset, len(d.ids), d.doc_tokens) for d in docs] == [("b.txt", 2, 5, 30)]
    assert docs[0].ids == list(range(32, 37))
    docs = load_documents(tmp_path, tok, offset=8, max_tokens=6)
    assert [(d.name, d.offset, d.ids) for d in docs] == [
        ("a.txt", 8, [18, 19]),
        ("b.txt", 0, [30, 31, 32, 33]),
    ]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": words([5, 6])}) + "\n\n" + json.dumps({"text": words([7])}) + "\n")
    assert [d.name for d in load_documents(rows, tok)] == ["rows.jsonl#0", "rows.jsonl#1"]
    with pytest.raises(B.BoomerangError, match="no tokens after offset"):
        load_documents(tmp_path, tok, offset=100)


def test_pseudo_perplexity_equals_hand_computation():
    bert = make_teacher("bert", n_layers=4)
    tok = mlm_tokenizer()
    text = words(ids(1, 13, 5)[0].clamp(min=5))
    seq = tok(text, add_special_tokens=False)["input_ids"]
    res = pseudo_perplexity(bert, [text], tok, context=8, batch_size=5)  # chunks of 6 tokens: 6 + 6 + 1
    total = 0.0
    for c in range(0, len(seq), 6):
        full = [1, *seq[c : c + 6], 2]
        for p in range(1, len(full) - 1):
            x = torch.tensor([full])
            x[0, p] = 4
            with torch.no_grad():
                total -= bert(x).logits[0, p].double().log_softmax(-1)[full[p]].item()
    assert res.scored == len(seq) == 13
    assert res.value == pytest.approx(math.exp(total / 13), rel=1e-6)


def test_distilbert_pseudo_perplexity_matches_its_bert_layout():
    from test_encoders import distil_from_bert

    bert = make_teacher("bert", n_layers=12)
    lm = B.LayerMap.preset("distilbert")
    distil = distil_from_bert(bert, lm)
    tok = mlm_tokenizer()
    text = words(ids(1, 12, 6)[0].clamp(min=5))
    plain = pseudo_perplexity(distil, [text], tok)  # DistilBertForMaskedLM: its own head on every position
    k0 = pseudo_perplexity(B.patch(bert, distil, lm, num_patched=0), [text], tok)
    assert plain.value == pytest.approx(k0.value, rel=1e-5)


def test_bad_input_is_reported(llama, tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(B.BoomerangError, match="does not exist"):
        perplexity(llama, tmp_path / "missing.txt", tok)
    with pytest.raises(B.BoomerangError, match="stride"):
        perplexity(llama, ["w5 w6 w7"], tok, context=8, stride=8)
    with pytest.raises(B.BoomerangError, match="exceeds the model's 128 positions"):
        perplexity(llama, ["w5 w6 w7"], tok, context=256)
    with pytest.raises(B.BoomerangError, match="masked LM"):
        pseudo_perplexity(llama, ["w5 w6 w7"], tok)
    with pytest.raises(B.BoomerangError, match="causal LM"):
        perplexity(make_teacher("bert", n_layers=2), ["w5 w6"], mlm_tokenizer())
    with pytest.raises(B.BoomerangError, match="tokenizer"):
        perplexity(llama, ["w5 w6 w7"])
    with pytest.raises(B.BoomerangError, match="nothing was scored"):
        perplexity(llama, ["w5"], tok)


def test_cli_eval_writes_json_and_fails_fast(tmp_path, llama):
    from tiny import make_student

    lm = B.LayerMap.from_kept([0, 2, 4, 5], 6)
    t_dir, _ = save_pair(tmp_path, llama, make_student(llama, lm), lm)
    data = tmp_path / "doc.txt"
    data.write_text(doc_text(40))
    out = tmp_path / "r.json"
    args = ["eval", str(t_dir), "--data", str(data), "--context", "16", "--stride", "8", "--max-tokens", "30"]
    assert run([*args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())["perplexity"]
    direct = perplexity(llama, data, tiny_tokenizer(), context=16, stride=8, max_tokens=30)
    assert report["value"] == pytest.approx(direct.value, rel=1e-6)
    assert report["documents"][0] | {"nll": 0, "ppl": 0} == {
        "name": "doc.txt", "offset": 0, "tokens": 30, "doc_tokens": 40, "scored": 29, "nll": 0, "ppl": 0,
    }  # fmt: skip
    assert run([*args, "--json", str(out)]) == 2  # exists, no --force
    # a checkpoint without weights: a bad --data must be reported before any loading is attempted
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((t_dir / "config.json").read_text())
    assert run(["eval", str(bare), "--data", str(tmp_path / "nope.txt")]) == 2
    assert run(["eval", str(bare), "--data", str(data), "--stride", "2000"]) == 2


@pytest.mark.real
def test_real_teacher_validation_slice(real_teacher_dir, corpora):
    model = B.load_model(real_teacher_dir, dtype="float32")
    tok = B.load_tokenizer(real_teacher_dir)
    res = evaluate(
        model,
        corpora / "validation",
        tok,
        context=256,
        stride=128,
        offset=1000,
        max_tokens=512,
    )
    (doc,) = res.docs
    assert (doc.name, doc.offset, doc.tokens, doc.scored) == ("pride-and-prejudice.txt", 1000, 512, 511)
    assert doc.doc_tokens > 150_000
    assert 5 < res.value < 60  # a 135M model on Austen


def test_document_inputs_are_accepted(llama):
    tok = tiny_tokenizer()
    docs = [Document("mine", list(range(10, 30)), 0, 20)]
    assert evaluate(llama, docs, tok, context=8, stride=4).docs[0].name == "mine"


def test_spec_object_and_evaluation_pipeline(llama, tmp_path):
    """``spec=EvalSpec(...)`` is the same as its fields as keywords (keywords win), and ``Evaluation`` (what
    ``boomerang eval`` runs) gives the same number; it checks its inputs before loading anything."""
    from boomerang.evaluate.lmeval import TaskOptions
    from boomerang.evaluate.spec import EvalSpec
    from boomerang.pipelines.evaluation import Evaluation

    tok, text = tiny_tokenizer(), [doc_text(40)]
    spec = EvalSpec(context=16, stride=8, max_tokens=30)
    direct = perplexity(llama, text, tok, context=16, stride=8, max_tokens=30)
    assert evaluate(llama, text, tok, spec).value == direct.value
    assert (
        evaluate(llama, text, tok, EvalSpec(context=64), stride=8, context=16, max_tokens=30).value
        == direct.value
    )
    job = Evaluation(llama, text, tokenizer=tok, spec=spec)
    assert job.spec.metric == "ppl" and job.runner is None and job.lm_eval() == {}
    assert job.perplexity().value == direct.value
    with pytest.raises(B.BoomerangError, match="give --data for perplexity and/or --tasks"):
        Evaluation(llama)
    with pytest.raises(B.BoomerangError, match="does not exist"):
        Evaluation(llama, tmp_path / "missing.txt", tokenizer=tok)
    with pytest.raises(B.BoomerangError, match="stride"):
        Evaluation(llama, text, tokenizer=tok, spec=EvalSpec(context=8, stride=8))
    with pytest.raises(B.BoomerangError, match="tokenizer"):
        Evaluation(llama, text).perplexity()
    # lm-eval counts are whole numbers; fractions stay fractions
    assert TaskOptions(limit=4.0).limit == 4 and isinstance(TaskOptions(limit=4.0).limit, int)
    assert TaskOptions(limit=0.5).limit == 0.5 and TaskOptions().limit is None


def test_eval_and_sweep_options_import_without_torch():
    """The CLI takes its eval/sweep option defaults from the option objects: their modules stay torch-free."""
    import subprocess
    import sys

    code = (
        "import sys, boomerang.cli.evaluate, boomerang.pipelines.sweep_inputs, boomerang.evaluate.spec; "
        "print(sorted(m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
