"""lm-evaluation-harness on in-memory tiny models with local task files (no Hub access), run for real."""

import json
import math
import random
from pathlib import Path

import pytest
import torch
from tiny import make_pair, make_teacher, save_pair, tiny_tokenizer

import boomerang as B
from boomerang.cli.app import run
from boomerang.evaluate.lmeval import (
    cloze_examples,
    make_cloze_task,
    metric_label,
    resolve_tasks,
    run_lm_eval,
)


def corpus(path, n_paragraphs=12, seed=0):
    """Paragraphs of tiny-vocabulary words with sentence ends, so that cloze targets exist."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(4, 30)]
    paras = [
        " ".join(rng.choice(vocab) + ("." if rng.random() < 0.15 else "") for _ in range(60))
        for _ in range(n_paragraphs)
    ]
    path.write_text("\n\n".join(paras))
    return path


def test_cloze_examples_are_lambada_style(tmp_path):
    text = corpus(tmp_path / "t.txt")
    test, shots = cloze_examples(text, n=8, n_fewshot=3, context_words=10, seed=1)
    assert len(test) == 8 and len(shots) == 3
    spans = []
    for row in test + shots:
        words = row["text"].split(" ")
        assert len(words) == 11
        target = words[-1]
        assert target.isalnum() and target in [w.rstrip(".") for w in words[:-1]]  # answerable from context
        spans.append(range(row["word_index"] - 10, row["word_index"] + 1))
    assert all(not set(a) & set(b) for i, a in enumerate(spans) for b in spans[i + 1 :])  # no overlap
    assert cloze_examples(text, n=8, n_fewshot=3, context_words=10, seed=1) == (test, shots)
    with pytest.raises(B.BoomerangError, match="no cloze examples"):
        cloze_examples(["no sentence ends here at all"], context_words=3)


def test_real_lm_eval_run_on_a_local_custom_task(tmp_path):
    """A user-written task YAML over local jsonl, run by lm-eval on an in-memory model, checked by hand."""
    model, tok = make_teacher("llama"), tiny_tokenizer()
    rng = random.Random(0)
    rows = [[f"w{rng.randint(4, 95)}" for _ in range(8)] for _ in range(6)]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"context": " ".join(r[:-1]), "answer": r[-1]}) + "\n" for r in rows))
    (tmp_path / "mine.yaml").write_text(
        f"""task: my_local_task
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
metadata:
  version: 1.0
"""
    )
    got = run_lm_eval(model, tok, ["my_local_task"], include_path=[tmp_path], batch_size=4)
    # by hand: the answer's log-probability given the context, and whether it is the greedy choice
    lls, hits = [], []
    for r in rows:
        x = torch.tensor([tok(" ".join(r), add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = model(x).logits[0, -2].double().log_softmax(-1)
        lls.append(logp[x[0, -1]].item())
        hits.append(float(logp.argmax() == x[0, -1]))
    assert got["my_local_task"]["perplexity"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-4)
    assert got["my_local_task"]["acc"] == pytest.approx(sum(hits) / len(hits))
    # the same task given as a YAML file path
    again = run_lm_eval(model, tok, [str(tmp_path / "mine.yaml")], batch_size=2, limit=3)
    assert set(again["my_local_task"]) == {"acc", "perplexity"}


def test_builtin_tasks_run_through_lm_eval_on_a_shared_member(tmp_path):
    teacher, student, lm = make_pair("llama")
    member = B.patch(teacher, student, lm, num_patched=2)  # zero-copy: shares the teacher's head tensors
    head = member.get_output_embeddings().weight
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    text = corpus(tmp_path / "t.txt")
    got = run_lm_eval(
        member, tiny_tokenizer(), ["boomerang_cloze", "boomerang_wordppl"], data=text, limit=6, n=6,
        context_words=12, passage_words=40, num_fewshot=1, work_dir=tmp_path / "tasks",
    )  # fmt: skip
    assert 0.0 <= got["boomerang_cloze"]["acc"] <= 1.0
    assert got["boomerang_cloze"]["perplexity"] > 1
    wp = got["boomerang_wordppl"]
    assert wp["word_perplexity"] > wp["byte_perplexity"] > 1 and wp["bits_per_byte"] > 0
    assert member.get_output_embeddings().weight is head  # HFLM's tie_weights() did not rebind anything
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert (tmp_path / "tasks" / "boomerang_cloze.yaml").is_file()
    assert "per whitespace-separated word" in metric_label("word_perplexity")


def test_unknown_task_fails_fast_with_suggestions(tmp_path):
    with pytest.raises(B.BoomerangError, match=r"unknown lm-eval task 'hellaswagg' \(did you mean hellaswag"):
        resolve_tasks(["hellaswagg"])
    with pytest.raises(B.BoomerangError, match="does not exist"):
        resolve_tasks([str(tmp_path / "missing.yaml")])
    with pytest.raises(B.BoomerangError, match="not a folder"):
        resolve_tasks(["boomerang_cloze"], include_path=[tmp_path / "nope"])
    names, paths, defaults = resolve_tasks(["boomerang_cloze", "hellaswag"])
    assert names == ["boomerang_cloze", "hellaswag"] and defaults and paths == []


def test_cli_eval_with_tasks(tmp_path):
    teacher, student, lm = make_pair("llama")
    t_dir, _ = save_pair(tmp_path, teacher, student, lm)
    text = corpus(tmp_path / "t.txt")
    out = tmp_path / "r.json"
    args = ["eval", str(t_dir), "--data", str(text), "--context", "32", "--max-tokens", "64"]
    code = run(
        [*args, "--tasks", "boomerang_cloze", "--cloze-n", "5", "--cloze-words", "12", "--limit", "5",
         "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["perplexity"]["metric"] == "ppl" and "acc" in report["lm_eval"]["boomerang_cloze"]
    # a bad task name is reported before the model is loaded (this checkpoint has no weights)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((t_dir / "config.json").read_text())
    assert run(["eval", str(bare), "--data", str(text), "--tasks", "hellaswagg"]) == 2


def test_make_cloze_task_writes_a_loadable_yaml(tmp_path):
    import yaml

    path = make_cloze_task(corpus(tmp_path / "t.txt"), tmp_path / "out", n=4, n_fewshot=2, context_words=8)
    cfg = yaml.safe_load(path.read_text())
    assert cfg["task"] == "boomerang_cloze" and cfg["output_type"] == "loglikelihood"
    assert set(cfg["dataset_kwargs"]["data_files"]) == {"test", "train"}
    assert len(Path(cfg["dataset_kwargs"]["data_files"]["test"]).read_text().splitlines()) == 4
