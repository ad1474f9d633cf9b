"""Exported GGUF files run in llama.cpp as in transformers (issue 25). Needs ``llama-cpp-python`` built from its
source distribution (see constraints.txt); skipped without it, and excluded from ``make test``.

* Tiny models of every supported architecture: a middle member's next-token logits agree with transformers' to
  float32 rounding (Gemma 3: llama.cpp's GELU is a float16 table, so about 1e-3), and llama.cpp tokenizes text
  with the exported vocabulary exactly as the member's tokenizer does.
* The real SmolLM2-135M-Instruct family (an undistilled ``boomerang init`` student): the student, a middle member
  and the teacher, exported as f32 and f16, agree with transformers on the next-token logits of a fixed chat prompt
  (tolerances below), and their 32 greedy tokens are the same text.

Run: ``pytest -m llamacpp tests/test_llamacpp.py -s`` (``-s`` prints the measured differences).
"""

import json

import numpy as np
import pytest
import torch
from tiny import BPE_TEXT, GGUF_CASES, save_bpe_pair
from transformers import AutoModelForCausalLM, AutoTokenizer

from boomerang.cli.app import run
from boomerang.family import load_family
from boomerang.io.gguf_export import export_gguf

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.llamacpp

F32_CACHE = 0  # GGML_TYPE_F32: llama.cpp keeps keys and values in float32, as transformers does
# max |logit difference| allowed at the prompt's last position. Measured (llama-cpp-python 0.3.36, 2 CPU threads):
# f32 3.7e-5 .. 6.8e-5, f16 2.7e-2 .. 4.0e-2 (f16 weights, and llama.cpp's f16 matmul rounds activations too)
TOLERANCE = {"f32": 1e-3, "f16": 1e-1}
GREEDY = 32
PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


class LlamaCpp:
    """One GGUF file loaded in llama.cpp, evaluated token by token like a causal LM."""

    def __init__(self, path, n_ctx=256):
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2,
            type_k=F32_CACHE, type_v=F32_CACHE, seed=0,
        )  # fmt: skip

    def logits(self, ids):
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids, n):
        out = []
        self.llm.reset()
        self.llm.eval(list(ids))
        for _ in range(n):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            self.llm.eval([token])
        return out

    def tokenize(self, text):
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def close(self):
        self.llm.close()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(model, ids, n):
    out, past = [], None
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            res = model(x, past_key_values=past, use_cache=True)
            past = res.past_key_values
            token = int(res.logits[0, -1].argmax())
            out.append(token)
            x = torch.tensor([[token]])
    return out


@pytest.mark.parametrize("arch", list(GGUF_CASES))
def test_tiny_members_run_in_llama_cpp_as_in_transformers(tmp_path, arch):
    split = GGUF_CASES[arch][0]
    over = {"use_sliding_window": False} if arch in ("qwen2", "qwen3") else {}
    over |= {"sliding_window": None} if arch == "mistral" else {}
    t_dir, s_dir = save_bpe_pair(tmp_path, arch, split, **over)
    out = tmp_path / "fam"
    args = ["family", "--teacher", str(t_dir), "--student", str(s_dir), "--out", str(out), "--sizes", "2"]
    assert run([*args, "--format", "gguf", "--gguf-type", "f32"]) == 0
    (row,) = load_family(out)["members"]
    model = AutoModelForCausalLM.from_pretrained(out / row["dir"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out / row["dir"])
    ids = tok(BPE_TEXT).input_ids  # longer than Gemma 3's 4-token window: its sliding layers matter
    cpp = LlamaCpp(out / row["gguf"]["file"], n_ctx=64)
    try:
        got, want = cpp.logits(ids), hf_logits(model, ids)
        diff = float(np.abs(got - want).max())
        print(
            f"\n{arch} {row['dir']} f32: max |logit diff| {diff:.2e} (logits up to {np.abs(want).max():.1f})"
        )
        assert diff <= (5e-3 if arch == "gemma3_text" else 1e-4)
        assert cpp.tokenize(BPE_TEXT) == ids
    finally:
        cpp.close()


ROPE = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    # original context 16: with head size 8 one frequency is blended and the others divided by the factor
    "llama3": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
}  # fmt: skip


@pytest.mark.parametrize("kind", list(ROPE))
def test_rope_scaling_runs_in_llama_cpp_as_in_transformers(tmp_path, kind):
    rope = {"rope_theta": 10000.0, **ROPE[kind]}
    t_dir, _ = save_bpe_pair(tmp_path, "llama", rope_parameters=rope)
    out = export_gguf(t_dir, tmp_path / "t.gguf", type="f32").path
    model = AutoModelForCausalLM.from_pretrained(t_dir, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(t_dir)(BPE_TEXT * 3).input_ids  # positions past the original context
    cpp = LlamaCpp(out, n_ctx=128)
    try:
        diff = float(np.abs(cpp.logits(ids) - hf_logits(model, ids)).max())
    finally:
        cpp.close()
    print(f"\nllama rope {kind}, {len(ids)} tokens: max |logit diff| {diff:.2e}")
    assert diff <= 1e-4


@pytest.fixture(scope="module")
def smollm2_family(real_teacher_dir, tmp_path_factory):
    """The real SmolLM2 family's student (K=0), middle member (K=8) and teacher (K=16), as f32 and f16 GGUF."""
    root = tmp_path_factory.mktemp("smollm2")
    student, out = root / "student", root / "fam"
    assert run(["init", "--teacher", str(real_teacher_dir), "--out", str(student)]) == 0  # undistilled
    args = ["family", "--teacher", str(real_teacher_dir), "--student", str(student), "--out", str(out)]
    assert run([*args, "--sizes", "0,8,16", "--format", "gguf", "--gguf-type", "f32"]) == 0
    rows = load_family(out)["members"]
    files = {}
    for row in rows:
        files[row["dir"], "f32"] = out / row["gguf"]["file"]
        files[row["dir"], "f16"] = export_gguf(
            out / row["dir"], root / f"{row['dir']}.f16.gguf", type="f16"
        ).path
    return out, rows, files


@pytest.mark.real
@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_smollm2_family_runs_in_llama_cpp_as_in_transformers(smollm2_family, kind):
    out, rows, files = smollm2_family
    measured = {}
    for row in rows:
        member = out / row["dir"]
        tok = AutoTokenizer.from_pretrained(member)
        ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False)
        model = AutoModelForCausalLM.from_pretrained(member, dtype=torch.float32).eval()
        cpp = LlamaCpp(files[row["dir"], kind])
        try:
            assert cpp.tokenize(tok.decode(ids)) == ids  # the GGUF's vocabulary tokenizes like the member's
            got, want = cpp.logits(ids), hf_logits(model, ids)
            last = float(np.abs(got[-1] - want[-1]).max())
            every = float(np.abs(got - want).max())
            cpp_text = tok.decode(cpp.greedy(ids, GREEDY))
            hf_text = tok.decode(hf_greedy(model, ids, GREEDY))
        finally:
            cpp.close()
        measured[row["dir"]] = {"next_token": last, "all_positions": every, "same_text": cpp_text == hf_text}
        print(
            f"\n{row['dir']} {kind}: max |next-token logit diff| {last:.2e} (all prompt positions {every:.2e})"
        )
        print(f"  llama.cpp:    {cpp_text!r}\n  transformers: {hf_text!r}")
        assert last <= TOLERANCE[kind]
        assert int(np.argmax(got[-1])) == int(np.argmax(want[-1]))
        assert cpp_text == hf_text
    print(json.dumps({kind: measured}))
