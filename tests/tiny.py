"""Tiny random models, one per supported architecture, built from configs (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedTokenizerFast

from boomerang.core.layermap import LayerMap, student_section
from boomerang.core.patching import assemble

VOCAB = 96
DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gpt_neox", "gpt2")

_COMMON = dict(
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=VOCAB,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def tiny_config(arch: str, n_layers: int = 6, tie: bool | None = None, **overrides):
    if arch in ("llama", "mistral"):
        kw = dict(_COMMON, sliding_window=6) if arch == "mistral" else dict(_COMMON)
    elif arch in ("qwen2", "qwen3"):
        # sliding attention on the deeper layers exercises layer_types / max_window_layers
        kw = dict(_COMMON, use_sliding_window=True, sliding_window=4, max_window_layers=n_layers // 2)
        if arch == "qwen3":
            kw["head_dim"] = 8
    elif arch == "gemma3_text":
        kw = dict(_COMMON, head_dim=8, sliding_window=4, query_pre_attn_scalar=8)
        kw["layer_types"] = ["sliding_attention" if i % 3 != 2 else "full_attention" for i in range(n_layers)]
    elif arch == "gpt_neox":
        kw = dict(
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=VOCAB,
            max_position_embeddings=128,
            bos_token_id=1,
            eos_token_id=2,
            rotary_pct=0.5,
        )
    elif arch == "gpt2":
        kw = dict(n_embd=32, n_head=4, n_positions=128, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)
    elif arch == "bert":
        kw = dict(
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=VOCAB,
            max_position_embeddings=128,
            type_vocab_size=2,
        )
    else:
        raise ValueError(arch)
    kw["n_layer" if arch == "gpt2" else "num_hidden_layers"] = n_layers
    if tie is not None:
        kw["tie_word_embeddings"] = tie
    kw.update(overrides)
    return AutoConfig.for_model(arch, **kw)


def make_teacher(arch: str, n_layers: int = 6, tie: bool | None = None, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = tiny_config(arch, n_layers, tie, **overrides)
    cls = AutoModelForMaskedLM if arch == "bert" else AutoModelForCausalLM
    model = cls.from_config(cfg).eval()
    with torch.no_grad():  # larger weights than the default init, so layers are far from identity
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model


def perturb(model, scale: float = 0.05, seed: int = 1):
    """Add noise to every parameter: stands in for distillation, so student != teacher."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def make_student(teacher, layer_map: LayerMap, seed: int = 1, scale: float = 0.05):
    """Copy the kept teacher layers (and embeddings/head) and perturb them."""
    student = assemble(
        {"teacher": teacher},
        [("teacher", j) for j in layer_map.kept],
        "teacher",
        "teacher",
        section=student_section(layer_map),
        copy=True,
    )
    return perturb(student, scale, seed).eval()


def make_pair(arch: str, n_layers: int = 6, kept=(0, 2, 4, 5), tie: bool | None = None, **overrides):
    teacher = make_teacher(arch, n_layers, tie, **overrides)
    lm = LayerMap.from_kept(kept, n_layers)
    return teacher, make_student(teacher, lm), lm


def tiny_tokenizer(directory: str | Path | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over VOCAB tokens ("<pad>", "<s>", "</s>", "<unk>", then w4..)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    if directory is not None:
        tok.save_pretrained(directory)
    return tok


def save_pair(
    tmp_path: Path, teacher, student, layer_map: LayerMap | None = None, sidecar_only: bool = False
):
    """Save teacher and student (with tokenizers) under tmp_path; returns their directories."""
    from boomerang.io.sidecar import write_sidecar

    t_dir, s_dir = tmp_path / "teacher", tmp_path / "student"
    teacher.save_pretrained(t_dir)
    tiny_tokenizer(t_dir)
    if sidecar_only:
        student.config.boomerang = None
    student.save_pretrained(s_dir)
    tiny_tokenizer(s_dir)
    if layer_map is not None:
        write_sidecar(s_dir, layer_map)
    return t_dir, s_dir


def ids(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (batch, length), generator=g)


# ---- distillation runs (issue 3) ----------------------------------------------------------------------------


def tiny_corpus(
    directory: str | Path, n_docs: int = 40, seed: int = 0, words=(20, 120), vocab=(4, VOCAB)
) -> Path:
    """Documents of random tiny-tokenizer words, one .txt file each."""
    import random

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n_docs):
        n = rng.randrange(*words)
        (directory / f"doc{i:03d}.txt").write_text(" ".join(f"w{rng.randrange(*vocab)}" for _ in range(n)))
    return directory


def tiny_run_setup(
    tmp_path: Path, arch: str = "llama", tie: bool = True, n_layers: int = 6, **overrides
) -> Path:
    """A saved tiny teacher (with tokenizer) plus train/ and val/ corpora under tmp_path; returns tmp_path."""
    teacher = make_teacher(arch, n_layers, tie, **overrides)
    teacher.save_pretrained(tmp_path / "teacher")
    tiny_tokenizer(tmp_path / "teacher")
    tiny_corpus(tmp_path / "train", 40, seed=0)
    tiny_corpus(tmp_path / "val", 5, seed=1)
    return tmp_path


def tiny_recipe(root: Path, **sections) -> dict:
    """A raw recipe dict for a tiny run under ``root`` (see tiny_run_setup); ``sections`` update it."""
    recipe = {
        "name": "tiny",
        "teacher": str(root / "teacher"),
        "data": {
            "train": str(root / "train"),
            "eval": str(root / "val"),
            "seq_len": 16,
            "cache_dir": str(root / "cache"),
        },
        "train": {"batch_size": 8, "micro_batch_size": 2, "steps": 6, "threads": 1, "precision": "fp32"},
        # no warm-up: with HF's schedule a warm-up step has lr 0, and these runs are a few steps long
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0},
        "eval": {"every": 0, "blocks": 4},
        "checkpoint": {"every": 0},
        "log": {"progress": False, "tensorboard": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            recipe.setdefault(key, {}).update(value)
        else:
            recipe[key] = value
    return recipe


def tiny_demo_setup(root: Path) -> tuple[Path, Path]:
    """A saved tiny llama teacher (positions for the demo's 512-token windows) and a data folder with train/ and
    validation/, for ``boomerang demo --teacher T --data D``; returns ``(T, D)``."""
    teacher = make_teacher("llama", 8, tie=True, max_position_embeddings=1024)
    teacher.save_pretrained(root / "teacher")
    tiny_tokenizer(root / "teacher")
    tiny_corpus(root / "data" / "train", 40, seed=0)
    tiny_corpus(root / "data" / "validation", 5, seed=1)
    return root / "teacher", root / "data"


# Small settings for `boomerang demo` on tiny models: 8 steps of 8 x 64 tokens, short sweeps, one thread.
TINY_DEMO_ARGS = ["--tokens", "4096", "--eval-tokens", "256"]  # the default order: size-aware
# The recipe's kept layers are SmolLM2's (30 layers): the tiny teacher's init is ShortGPT's, blocks of at most 3.
TINY_DEMO_OVERRIDES = [
    "data.seq_len=64",
    "train.batch_size=8",
    "train.micro_batch_size=8",
    "eval.blocks=2",
    "train.threads=1",
    "init.strategy=shortgpt",
    "init.layers=null",
    "init.max_block=3",
]


# ---- byte-level BPE tokenizers (GGUF export, issue 25) ------------------------------------------------------

# ids 0, 1, 2: pad, bos and eos of tiny configs
BPE_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_bpe_tokenizer(directory: str | Path | None = None, split: str | None = None, vocab_size: int = 320):
    """A byte-level BPE tokenizer (GPT-2's pre-tokenizer, or ``Split(split)`` + ByteLevel like Llama 3 / Qwen)
    trained on a fixed English-like text, with the three specials first; ``len(tok)`` is its vocabulary size."""
    import random

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    if split is None:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tk.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    words = [
        "the",
        "a",
        "cat",
        "sat",
        "on",
        "mat",
        "dog",
        "ran",
        "far",
        "away",
        "hello",
        "world",
        "and",
        "then",
    ]
    text = [
        " ".join(rng.choice(words) for _ in range(12)) + rng.choice([".", "!", "?", ", 42."])
        for _ in range(200)
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BPE_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(text, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",  # as SmolLM2
    )
    tok.chat_template = CHAT_TEMPLATE
    if directory is not None:
        tok.save_pretrained(directory)
    return tok


def _split(name: str) -> str:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    return GGUF_PRE_TOKENIZER_SPLITS[name]


QWEN_SPLIT, LLAMA3_SPLIT = _split("qwen2"), _split("llama3")
# per architecture: the tokenizer's pre-tokenizer (None: GPT-2's), llama.cpp's name for it, the GGUF architecture
GGUF_CASES = {
    "llama": (None, "gpt-2", "llama"),
    "mistral": (LLAMA3_SPLIT, "llama3", "llama"),  # llama.cpp's converter writes Mistral as llama too
    "qwen2": (QWEN_SPLIT, "qwen2", "qwen2"),
    "qwen3": (QWEN_SPLIT, "qwen2", "qwen3"),
    "gemma3_text": (None, "gpt-2", "gemma3"),
}
BPE_TEXT = "the cat sat on the mat, 42 dogs ran far away! <|im_start|>hello world<|im_end|>"


def save_bpe_pair(tmp_path: Path, arch: str, split: str | None = None, **overrides):
    """A tiny teacher/student pair saved with a byte-level BPE tokenizer (the vocabulary sized to it)."""
    from boomerang.io.checkpoints import tokenizer_files

    tok = tiny_bpe_tokenizer(split=split)
    teacher, student, lm = make_pair(arch, vocab_size=len(tok), **overrides)
    t_dir, s_dir = save_pair(tmp_path, teacher, student, lm)
    for d in (t_dir, s_dir):
        for f in tokenizer_files(d):
            f.unlink()
        tok.save_pretrained(d)
    return t_dir, s_dir
