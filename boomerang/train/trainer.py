"""The distillation trainer (stage 2) on Hugging Face Accelerate.

One process on CPU or GPU, or several through ``accelerate launch`` / ``torchrun`` (DDP; FSDP shards the
teacher as well). The teacher is frozen (eval mode, no gradients, no optimizer state). Every optimizer step
consumes ``train.batch_size`` blocks in a seeded order; each process takes its share of micro-batches, and the
loss is normalised by the token counts of the whole global batch, so any split into processes and gradient
accumulation steps gives the same update.

Run directory layout::

    OUT/recipe.yaml           the resolved recipe
    OUT/metrics.jsonl         one record per logged step and per validation
    OUT/tensorboard/          if tensorboard is installed
    OUT/checkpoints/step-N/   model, optimizer, scheduler, RNG and data position (atomic; last K kept)
    OUT/student/              the final student: a standard HF checkpoint with its layer map
    OUT/summary.json
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.hooks import layer_list
from ..core.layermap import LayerMap
from ..errors import BoomerangError
from ..io.atomic import atomic_dir, atomic_write_text
from .lean import lean_mlps
from .losses import DistillLoss, LossConfig, ModelOutputs, head_mode_problem, model_outputs, token_counts
from .recipe import Recipe

STATE = "state.json"
PAUSE_ENV = "BOOMERANG_TEST_PAUSE_AFTER_STEP"  # tests: stop (and wait to be killed) after this step


# ---- small pieces -------------------------------------------------------------------------------------------


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _Forward(nn.Module):
    """A model's forward pass as one module, so that DDP/FSDP wrappers see every call."""

    def __init__(self, model: nn.Module, keys: list[str], mode: str):
        super().__init__()
        self.model, self.keys, self.mode = model, keys, mode

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ModelOutputs:
        return model_outputs(self.model, input_ids, attention_mask, self.keys, mode=self.mode)  # type: ignore[arg-type]


def untie_head(model: nn.Module) -> bool:
    """Give a tied model its own LM head (a copy of the embedding). Returns False if it was not tied."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()  # type: ignore[operator]
    if out is None or inp is None or out.weight is not inp.weight:
        return False
    out.weight = nn.Parameter(inp.weight.detach().clone(), requires_grad=inp.weight.requires_grad)
    model.config.tie_word_embeddings = False  # type: ignore[union-attr]
    return True


def freeze(model: nn.Module, *, embeddings: bool, head: bool, final_norm: bool) -> list[str]:
    """Freeze parts of the student; returns what was frozen (tied matrices are frozen by either flag)."""
    from ..core.arch import get_arch

    arch = get_arch(model.config)
    frozen = []
    targets: list[tuple[str, nn.Module | None]] = []
    if embeddings:
        targets += [("embeddings", model.get_input_embeddings())]  # type: ignore[operator]
        targets += [("embeddings", model.get_submodule(m)) for m in arch.embed if _has(model, m)]
    if head:
        targets.append(("LM head", model.get_output_embeddings()))  # type: ignore[operator]
    if final_norm and arch.final_norm:
        targets.append(("final norm", model.get_submodule(arch.final_norm)))
    for what, module in targets:
        if module is None:
            continue
        for p in module.parameters():
            p.requires_grad_(False)
        if what not in frozen:
            frozen.append(what)
    return frozen


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def compile_layers(model: nn.Module) -> None:
    """``torch.compile`` each layer's forward; hooks (on the modules) stay outside the compiled code."""
    for layer in layer_list(model):
        layer.forward = torch.compile(layer.forward, dynamic=False)  # type: ignore[method-assign]


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on biases and norm weights (as HF Trainer does)."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


# ---- checkpoint files (safetensors + JSON; nothing pickled) -------------------------------------------------


def _optimizer_to_files(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = t
    for pid, vals in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(vals)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _rng_to_files(states: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = {}, []
    for r, st in enumerate(states):
        tensors[f"{r}.torch"] = st["torch"]
        for i, c in enumerate(st.get("cuda", [])):
            tensors[f"{r}.cuda.{i}"] = c
        py = st["python"]
        npst = st["numpy"]
        tensors[f"{r}.numpy"] = torch.from_numpy(np.asarray(npst[1], dtype=np.int64))
        meta.append(
            {
                "python": [py[0], list(py[1]), py[2]],
                "numpy": [npst[0], int(npst[2]), int(npst[3]), float(npst[4])],
                "cuda": len(st.get("cuda", [])),
            }
        )
    return tensors, {"ranks": meta}


def _rng_from_files(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], rank: int
) -> dict[str, Any] | None:
    ranks = meta["ranks"]
    if rank >= len(ranks):
        return None
    m = ranks[rank]
    py = m["python"]
    st = {
        "torch": tensors[f"{rank}.torch"],
        "python": (py[0], tuple(py[1]), py[2]),
        "numpy": (m["numpy"][0], tensors[f"{rank}.numpy"].numpy().astype(np.uint32), *m["numpy"][1:]),
    }
    if m["cuda"]:
        st["cuda"] = [tensors[f"{rank}.cuda.{i}"] for i in range(m["cuda"])]
    return st


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run directory, oldest first."""
    d = out / "checkpoints"
    if not d.is_dir():
        return []
    done = [p for p in d.iterdir() if p.name.startswith("step-") and (p / STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


# ---- the run ------------------------------------------------------------------------------------------------


@dataclass
class RunState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # real training tokens consumed
    data_position: int = 0  # blocks consumed
    skipped: int = 0  # non-finite steps skipped
    elapsed: float = 0.0  # training seconds (across resumes)
    teacher_eval: dict[str, float] | None = None
    last_eval: dict[str, float] | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # recent train records (for the summary)


class Distiller:
    """Sets up teacher, student, data, loss and optimizer from a recipe, and runs the training loop."""

    def __init__(
        self, recipe: Recipe, *, out: str | Path | None = None, resume: bool = False, force: bool = False
    ):
        self.recipe = recipe
        self.out = Path(out or recipe.out or Path("runs") / (recipe.name or "distill"))
        self.resume, self.force = resume, force

    # -- setup --------------------------------------------------------------------------------------------------
    def _prepare_out(self) -> Path | None:
        """Check OUT; returns the checkpoint to resume from, if any (main process decides, others follow)."""
        out = self.out
        is_run = (out / "recipe.yaml").is_file()
        if out.exists() and not out.is_dir():
            raise BoomerangError(f"{out} exists and is not a directory")
        if self.resume:
            ckpts = list_checkpoints(out)
            if ckpts:
                return ckpts[-1]
            if out.exists() and any(out.iterdir()) and not is_run:
                raise BoomerangError(f"{out} is not a boomerang run directory; nothing to resume there")
            return None
        if out.exists() and any(out.iterdir()):
            if not self.force:
                raise BoomerangError(
                    f"{out} already exists; pass --resume to continue that run or --force to start over"
                )
            if not is_run:
                raise BoomerangError(
                    f"{out} exists and is not a boomerang run directory (no recipe.yaml); refusing to delete it"
                )
        return None

    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, set_seed
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        r = self.recipe
        precision = r.train.precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        self.precision = precision
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()  # a process may run several recipes (the distributed state is kept)
        # several processes without GPUs: accelerate only picks the gloo (MULTI_CPU) path when told cpu=True
        cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
        self.acc = acc = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=cpu)
        self.main = acc.is_main_process
        self.world = acc.num_processes
        self.rank = acc.process_index
        self.fsdp = acc.distributed_type == DistributedType.FSDP
        if r.train.threads:
            torch.set_num_threads(r.train.threads)
        per_step = r.train.micro_batch_size * self.world
        if r.train.batch_size % per_step:
            raise BoomerangError(
                f"train.batch_size ({r.train.batch_size}) must be a multiple of micro_batch_size × processes "
                f"({r.train.micro_batch_size} × {self.world})"
            )
        self.accum = r.train.batch_size // per_step

        decision: tuple[str | None, str | None] = (None, None)  # (checkpoint to resume, error)
        if self.main:  # the main process decides; every process raises the same error, none waits forever
            try:
                ckpt = self._prepare_out()
                decision = (str(ckpt) if ckpt else None, None)
            except BoomerangError as e:
                decision = (None, str(e))
        resume_from, error = self._broadcast(decision)
        if error:
            raise BoomerangError(error)
        self.resume_from = Path(resume_from) if resume_from else None
        if self.resume and self.resume_from is not None:
            self._check_resumable()
        if self.main and not self.resume and self.out.exists() and self.force:
            shutil.rmtree(self.out)
        acc.wait_for_everyone()
        set_seed(r.train.seed)

        self._setup_models()
        self._setup_data()
        self._setup_training()

    def _broadcast(self, value: Any) -> Any:
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def _check_resumable(self) -> None:
        import yaml

        saved_file = self.out / "recipe.yaml"
        if not saved_file.is_file():
            return
        saved = yaml.safe_load(saved_file.read_text())
        now = self.recipe.model_dump(mode="json")
        free = {"out", "checkpoint", "log", "eval", "train.max_nonfinite", "train.threads", "name"}
        diffs = [k for k in _diff(saved, now) if not any(k == f or k.startswith(f + ".") for f in free)]
        if diffs:
            raise BoomerangError(
                f"cannot resume {self.out}: the recipe differs from the one it was started with in "
                f"{', '.join(diffs)}. Use the same settings, or start a new run (--force or another --out)."
            )

    def _setup_models(self) -> None:
        from ..core.arch import get_arch, n_layers
        from ..core.configs import check_compatible
        from ..io.loading import load_model, load_tokenizer, parse_dtype
        from ..io.sidecar import student_layer_map
        from .recipe import resolve_model_spec

        r = self.recipe
        teacher_path = resolve_model_spec(r.teacher)
        self.teacher_path = teacher_path
        t_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        teacher = load_model(teacher_path, dtype=t_dtype)
        if get_arch(teacher.config).encoder:
            raise BoomerangError(
                f"distillation here trains causal LMs; {teacher.config.model_type} is a masked-LM encoder"
            )
        self.save_dtype = parse_dtype(
            str(getattr(teacher.config, "dtype", None) or "float32").replace("torch.", "")
        )
        self.tokenizer = load_tokenizer(teacher_path)
        teacher.eval().requires_grad_(False)
        if r.student:
            student = load_model(resolve_model_spec(r.student), dtype=torch.float32)
            check_compatible(teacher.config, student.config)
            lm = student_layer_map(student)
            if lm.n_teacher != n_layers(teacher.config) or lm.n_student != n_layers(student.config):
                raise BoomerangError(
                    f"the student's layer map ({lm.describe()}) does not fit this teacher/student"
                )
        else:
            student = self._init_student(teacher)
            lm = student_layer_map(student)
        student = student.float().requires_grad_(True)
        self.layer_map: LayerMap = lm
        tr = r.train
        if tr.untie_head and not untie_head(student):
            self._note("train.untie_head: the student's head is already untied")
        self.frozen = freeze(
            student, embeddings=tr.freeze_embeddings, head=tr.freeze_head, final_norm=tr.freeze_final_norm
        )
        if tr.gradient_checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._undo_lean = lean_mlps(layer_list(student)) if tr.lean_mlp else (lambda: None)
        student.config.use_cache = False
        student.train()
        self.student, self.teacher = student, teacher
        self.loss_fn = DistillLoss(r.loss, lm)
        problem = head_mode_problem(student) or head_mode_problem(teacher)
        if self.fsdp:
            problem = problem or "FSDP shards the LM head"
        if tr.fused_loss and problem:
            raise BoomerangError(f"train.fused_loss is on, but {problem}; set train.fused_loss: false")
        self.mode = "logits" if (problem or tr.fused_loss is False) else "head"
        self.s_fwd = _Forward(student, self.loss_fn.keys(0), self.mode)
        self.t_fwd = (
            _Forward(teacher, self.loss_fn.keys(1), self.mode) if self.loss_fn.needs_teacher else None
        )

    def _init_student(self, teacher: nn.Module) -> nn.Module:
        from ..data.blocks import calibration_ids
        from .initialise import init_student

        r, ini = self.recipe, self.recipe.init
        calib = None
        spec: Any = ini.layers if ini.strategy == "layers" else ini.strategy
        if ini.strategy == "similarity":
            src = ini.calibration or r.data.train
            calib = calibration_ids(
                src,
                self.tokenizer,
                n=ini.calibration_texts,
                length=ini.calibration_length,
                seed=ini.seed,
                text_field=r.data.text_field,
            )
        return init_student(
            teacher,  # type: ignore[arg-type]
            spec,
            every=ini.every,
            keep_first=ini.keep_first,
            keep_last=ini.keep_last,
            size=ini.size,
            calibration=calib,
            seed=ini.seed,
            teacher_name=r.teacher,
            patch_order=r.patch_order,
        )

    def _setup_data(self) -> None:
        from ..data.blocks import (
            Blocks,
            ShuffledBlocks,
            StreamingBlocks,
            docs_to_blocks,
            eos_id,
            pack,
            pad_id,
            tokenize,
            tokenized_docs,
        )
        from ..data.corpora import read_texts

        d, tok = self.recipe.data, self.tokenizer
        eos, pad = eos_id(tok), pad_id(tok)
        streaming = d.streaming if d.streaming is not None else d.train.startswith("hf:")
        opts = dict(text_field=d.text_field, add_bos=d.add_bos)
        eval_docs: list[list[int]] = []
        if streaming:
            self.train_data: Any = StreamingBlocks(
                d.train,
                tok,
                d.seq_len,
                seed=self.recipe.train.seed,
                buffer=d.shuffle_buffer,
                skip_docs=d.heldout_docs + d.skip_docs,
                packing=d.packing,
                **opts,
            )
            if d.heldout_docs:
                eval_docs = list(
                    tokenize(read_texts(d.train, text_field=d.text_field, limit=d.heldout_docs), tok)
                )
            self.data_desc = f"{d.train} (streamed, shuffle buffer {d.shuffle_buffer} blocks)"
        else:
            with self.acc.main_process_first():
                docs = tokenized_docs(d.train, tok, cache_dir=d.cache_dir, **opts)
            eval_docs = docs[: d.heldout_docs]
            train_docs = docs[d.heldout_docs + d.skip_docs :]
            blocks = docs_to_blocks(train_docs, d.seq_len, eos, packing=d.packing, pad=pad)
            self.train_data = ShuffledBlocks(blocks, seed=self.recipe.train.seed)
            self.data_desc = (
                f"{d.train}: {len(train_docs)} documents, {len(blocks)} blocks, {blocks.n_tokens:,} tokens"
            )
        n_eval = self.recipe.eval.blocks
        self.eval_blocks: Blocks | None = None
        self.eval_slice: dict[str, Any] | None = None
        if n_eval and (d.eval or eval_docs):
            if d.eval and (d.eval.startswith("hf:") or streaming):
                rows = []
                for b in pack(tokenize(read_texts(d.eval, text_field=d.text_field), tok), d.seq_len, eos):
                    rows.append(b)
                    if len(rows) >= n_eval:
                        break
                self.eval_blocks = Blocks(torch.tensor(rows, dtype=torch.int32).view(-1, d.seq_len))
            else:
                if d.eval:
                    with self.acc.main_process_first():
                        eval_docs = tokenized_docs(d.eval, tok, cache_dir=d.cache_dir, **opts)
                self.eval_blocks = docs_to_blocks(eval_docs, d.seq_len, eos, packing=d.packing, pad=pad).head(
                    n_eval
                )
            if len(self.eval_blocks) == 0:
                raise BoomerangError(f"the validation data has fewer than seq_len={d.seq_len} tokens")
            src = d.eval or f"the first {d.heldout_docs} documents of {d.train}"
            how = "packed" if d.packing else "one padded document each"
            self.eval_slice = {
                "source": src,
                "from": "start",
                "blocks": len(self.eval_blocks),
                "seq_len": d.seq_len,
                "tokens": self.eval_blocks.n_tokens,
                "layout": how,
            }
        # the length of the run
        tr = self.recipe.train
        if isinstance(self.train_data, ShuffledBlocks):
            tokens_per_block = self.train_data.blocks.n_tokens / len(self.train_data.blocks)
        else:
            tokens_per_block = d.seq_len
        tokens_per_step = tokens_per_block * tr.batch_size
        limits = [tr.steps] if tr.steps else []
        if tr.max_tokens:
            limits.append(max(1, math.ceil(tr.max_tokens / tokens_per_step)))
        self.total_steps = min(limits)
        self.tokens_per_step = tokens_per_step

    def _setup_training(self) -> None:
        o = self.recipe.optim
        groups = optimizer_groups(self.student, o.weight_decay)
        if not any(g["params"] for g in groups):
            raise BoomerangError("every student parameter is frozen; nothing to train")
        # the fused kernel is one pass over the parameters (3.5x faster than the default on CPU)
        fused = all(
            p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in self.student.parameters()
        )
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=fused or None)
        self.warmup = math.ceil(o.warmup_ratio * self.total_steps)
        total, warmup = self.total_steps, self.warmup

        def factor(step: int) -> float:
            return lr_factor(step, total, warmup, o.schedule, o.min_lr_ratio)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        acc = self.acc
        self.s_mod, self.optimizer = acc.prepare(self.s_fwd, opt)
        self.scheduler = (
            sched  # stepped once per optimizer step by us (accelerate's wrapper steps per process)
        )
        self.t_mod = None
        if self.t_fwd is not None:  # frozen: sharded under FSDP, otherwise simply placed (never DDP-wrapped)
            self.t_mod = acc.prepare_model(self.t_fwd) if self.fsdp else self.t_fwd.to(acc.device)
        if self.recipe.train.compile:
            compile_layers(self.student)
            compile_layers(self.teacher)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.state = RunState()

    # -- logging --------------------------------------------------------------------------------------------------
    def _note(self, msg: str) -> None:
        if getattr(self, "main", True):
            from ..ui import err_console

            err_console.print(f"[dim]{msg}[/]", highlight=False)

    def _open_logs(self) -> None:
        self.metrics_path = self.out / "metrics.jsonl"
        self.tb = None
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if self.resume_from is not None and self.metrics_path.is_file():  # drop records after the checkpoint
            keep = [
                line
                for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= self.state.step
            ]
            atomic_write_text(self.metrics_path, "".join(k + "\n" for k in keep))
        elif self.resume_from is None:
            self.metrics_path.unlink(missing_ok=True)
        atomic_write_text(self.out / "recipe.yaml", self.recipe.to_yaml())
        want_tb = self.recipe.log.tensorboard
        if want_tb is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.state.step + 1)
            except ImportError:
                if want_tb:
                    raise BoomerangError("log.tensorboard is on but tensorboard is not installed") from None

    def _log(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        record = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
        }
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            prefix = "eval/" if record.get("kind") == "eval" else "train/"
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "kind"):
                    self.tb.add_scalar(prefix + k, v, record["step"])

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        from safetensors.torch import save_file, save_model

        acc, step = self.acc, self.state.step
        states = [rng_state()]
        if self.world > 1:
            from accelerate.utils import gather_object

            states = gather_object([rng_state()])
        if self.fsdp:
            path = self.out / "checkpoints" / f"step-{step:07d}"
            acc.save_state(str(path))  # FSDP: accelerate's sharded format
            if self.main:
                atomic_write_text(path / STATE, json.dumps(self._state_json(), indent=1))
        elif self.main:
            with atomic_dir(self.out / "checkpoints" / f"step-{step:07d}", force=True) as tmp:
                save_model(acc.unwrap_model(self.s_mod).model, str(tmp / "model.safetensors"))
                tensors, meta = _optimizer_to_files(self.optimizer.optimizer.state_dict())
                save_file(tensors, str(tmp / "optimizer.safetensors"))
                (tmp / "optimizer.json").write_text(json.dumps(meta))
                (tmp / "scheduler.json").write_text(json.dumps(self.scheduler.state_dict()))
                rt, rm = _rng_to_files(states)
                save_file(rt, str(tmp / "rng.safetensors"))
                (tmp / "rng.json").write_text(json.dumps(rm))
                (tmp / STATE).write_text(json.dumps(self._state_json(), indent=1))
        if self.main:
            for old in list_checkpoints(self.out)[: -self.recipe.checkpoint.keep]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _state_json(self) -> dict[str, Any]:
        s = self.state
        return {
            "step": s.step,
            "tokens": s.tokens,
            "data_position": s.data_position,
            "skipped": s.skipped,
            "elapsed": s.elapsed,
            "teacher_eval": s.teacher_eval,
            "last_eval": s.last_eval,
            "world_size": self.world,
        }

    def _load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file, load_model

        meta = json.loads((path / STATE).read_text())
        if self.fsdp:
            self.acc.load_state(str(path))
        else:
            load_model(self.acc.unwrap_model(self.s_mod).model, str(path / "model.safetensors"), strict=True)
            opt = _optimizer_from_files(
                load_file(str(path / "optimizer.safetensors")),
                json.loads((path / "optimizer.json").read_text()),
            )
            self.optimizer.optimizer.load_state_dict(opt)
            self.scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
            rng = _rng_from_files(
                load_file(str(path / "rng.safetensors")),
                json.loads((path / "rng.json").read_text()),
                self.rank,
            )
            if rng is not None and meta.get("world_size", 1) == self.world:
                set_rng_state(rng)
        s = self.state
        s.step, s.tokens, s.data_position = meta["step"], meta["tokens"], meta["data_position"]
        s.skipped, s.elapsed = meta["skipped"], meta["elapsed"]
        s.teacher_eval, s.last_eval = meta.get("teacher_eval"), meta.get("last_eval")
        self.train_data.seek(s.data_position)

    # -- steps ------------------------------------------------------------------------------------------------------
    def _micro_batches(self, batch: Any) -> Iterator[Any]:
        mb = self.recipe.train.micro_batch_size
        for a in range(self.accum):
            start = (a * self.world + self.rank) * mb
            yield batch.slice(start, start + mb).to(self.acc.device)

    def _teacher(self, ids: torch.Tensor, mask: torch.Tensor | None) -> ModelOutputs | None:
        if self.t_mod is None:
            return None
        with torch.no_grad(), self.acc.autocast():
            return self.t_mod(ids, mask)

    def _reduce(self, sums: dict[str, float]) -> dict[str, float]:
        keys = sorted(sums)
        if self.world == 1:
            return sums
        t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.acc.device)
        t = self.acc.reduce(t, reduction="sum")
        return dict(zip(keys, t.tolist(), strict=True))

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over one global batch; returns its record."""
        acc, r = self.acc, self.recipe
        batch = self.train_data.take(r.train.batch_size)  # identical on every process
        n_ce, n_tok = token_counts(batch.input_ids, batch.attention_mask)
        sums = {"ce": 0.0, "kl": 0.0, "cos": 0.0, "n_ce": 0.0, "n_tok": 0.0}
        micro = list(self._micro_batches(batch))
        for a, mb in enumerate(micro):
            last = a == len(micro) - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.s_mod):
                mask = mb.attention_mask
                t_out = self._teacher(mb.input_ids, mask)
                s_out = self.s_mod(mb.input_ids, mask)
                with acc.autocast():
                    out = self.loss_fn(
                        s_out, t_out, mb.input_ids, mask, n_ce=n_ce, n_tok=n_tok, scale=self.world
                    )
                acc.backward(out.loss)
            for k, v in out.sums.items():
                sums[k] += v
            del s_out, t_out, out
        sums = self._reduce(sums)
        terms = self.loss_fn.summarise(sums)
        max_norm = r.optim.max_grad_norm or float("inf")
        grad_norm = float("nan")
        ok = all(math.isfinite(v) for v in terms.values())
        if ok:
            grad_norm = float(acc.clip_grad_norm_(self.params, max_norm))
            ok = math.isfinite(grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        if ok:
            self.optimizer.step()
        with warnings.catch_warnings():  # a skipped update still advances the schedule
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.data_position = self.train_data.position
        self.state.tokens += int(sums["n_tok"])
        rec: dict[str, Any] = {"step": self.state.step, **{k: round(v, 6) for k, v in terms.items()}}
        rec.update(
            lr=lr, grad_norm=round(grad_norm, 6), tokens=self.state.tokens, step_tokens=int(sums["n_tok"])
        )
        if not ok:
            self.state.skipped += 1
            rec["skipped"] = True
        return rec

    @torch.no_grad()
    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        """Loss terms and perplexity on the validation blocks (the student, or ``model`` alone for CE)."""
        assert self.eval_blocks is not None
        blocks = self.eval_blocks
        bs = self.recipe.eval.batch_size or self.recipe.train.micro_batch_size
        # FSDP forwards are collective: every process must run the same number of them
        usable = len(blocks) - len(blocks) % self.world if self.fsdp else len(blocks)
        mine = list(range(self.rank, usable, self.world))
        t_mod = self.t_mod
        if model is not None and t_mod is None:
            t_mod = _Forward(model.to(self.acc.device), [], self.mode)
        sums = {"ce": 0.0, "kl": 0.0, "cos": 0.0, "n_ce": 0.0, "n_tok": 0.0}
        student = self.s_mod if self.fsdp else self.acc.unwrap_model(self.s_mod)  # no DDP buffer syncs
        ce_only = DistillLoss(
            LossConfig(kl=0, cos=0, chunk_tokens=self.recipe.loss.chunk_tokens), self.layer_map
        )
        was_training = student.training
        student.eval()
        try:
            for i in range(0, len(mine), bs):
                b = blocks.batch(mine[i : i + bs]).to(self.acc.device)
                n_ce, n_tok = token_counts(b.input_ids, b.attention_mask)
                if model is not None:  # CE of the teacher alone
                    with self.acc.autocast():
                        o = t_mod(b.input_ids, b.attention_mask)  # type: ignore[misc]
                        lo = ce_only(o, None, b.input_ids, b.attention_mask, n_ce=n_ce, n_tok=n_tok)
                else:
                    t_out = self._teacher(b.input_ids, b.attention_mask)
                    s_out = student(b.input_ids, b.attention_mask)
                    with self.acc.autocast():
                        lo = self.loss_fn(s_out, t_out, b.input_ids, b.attention_mask, n_ce=n_ce, n_tok=n_tok)
                for k, v in lo.sums.items():
                    sums[k] += v
        finally:
            student.train(was_training)
        sums = self._reduce(sums)
        terms = self.loss_fn.summarise(sums) if model is None else {"ce": sums["ce"] / max(sums["n_ce"], 1)}
        terms["ppl"] = math.exp(min(terms["ce"], 50.0))
        terms["tokens"] = sums["n_tok"]
        return terms

    # -- the loop -----------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.setup()
        if self.resume_from is not None:
            self._load_checkpoint(self.resume_from)
        self._open_logs()
        self._print_plan()
        s, r = self.state, self.recipe
        if self.eval_blocks is not None and r.eval.teacher and s.teacher_eval is None:
            s.teacher_eval = self.evaluate(self.teacher)
            self._log({"step": s.step, "kind": "eval", "model": "teacher", **s.teacher_eval})
        pause_at = int(os.environ.get(PAUSE_ENV, "0") or 0)
        progress = self._progress()
        window: list[tuple[float, int]] = []
        with progress:
            task = progress.add_task("distill", total=self.total_steps, completed=s.step, terms="", speed="")
            while s.step < self.total_steps:
                t0 = time.perf_counter()
                rec = self.train_step()
                dt = time.perf_counter() - t0
                s.elapsed += dt
                window = [*window[-19:], (dt, rec.pop("step_tokens"))]
                tok_s = sum(w[1] for w in window) / max(sum(w[0] for w in window), 1e-9)
                rec.update(tok_s=round(tok_s, 2), elapsed=round(s.elapsed, 2))
                s.history = [*s.history[-49:], rec]
                if rec.get("skipped"):
                    self._note(
                        f"step {s.step}: non-finite loss or gradient; update skipped ({s.skipped} so far, "
                        f"abort after {r.train.max_nonfinite})"
                    )
                    self._log(rec)
                    if s.skipped > r.train.max_nonfinite:
                        raise BoomerangError(
                            f"aborting at step {s.step}: {s.skipped} steps had a non-finite loss or gradient "
                            f"(train.max_nonfinite={r.train.max_nonfinite}). Lower optim.lr, check the data, or use "
                            f"--resume from the last checkpoint in {self.out / 'checkpoints'}."
                        )
                elif s.step % r.log.every == 0 or s.step == self.total_steps:
                    self._log(rec)
                terms = " ".join(
                    f"{k} {rec[k]:.4g}" for k in ("loss", "ce", "kl", "cos") if rec.get(k) is not None
                )
                progress.update(task, completed=s.step, terms=terms, speed=f"{tok_s:,.0f} tok/s")
                if self.eval_blocks is not None and r.eval.every and s.step % r.eval.every == 0:
                    self._validate(progress)
                if r.checkpoint.every and s.step % r.checkpoint.every == 0 and s.step < self.total_steps:
                    self._save_checkpoint()
                if pause_at and s.step == pause_at:
                    self._pause()
        if self.eval_blocks is not None and (not r.eval.every or s.step % r.eval.every):
            self._validate(None)
        return self._finish()

    def _validate(self, progress: Any) -> None:
        s = self.state
        s.last_eval = self.evaluate()
        self._log({"step": s.step, "kind": "eval", "model": "student", **s.last_eval})
        if self.main:
            t = s.teacher_eval
            ref = f" (teacher {t['ppl']:.2f})" if t else ""
            msg = (
                f"step {s.step}: validation loss {s.last_eval['loss']:.4f}, ppl {s.last_eval['ppl']:.2f}{ref}"
            )
            (progress.console if progress is not None else _console()).print(msg, highlight=False)

    def _pause(self) -> None:
        """Test hook: announce and wait to be killed."""
        if self.main:
            (self.out / ".paused").write_text(str(self.state.step))
        while True:
            time.sleep(1)

    def _progress(self) -> Any:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from ..ui import err_console

        return Progress(
            TextColumn("[bold]distill"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[terms]}"),
            TextColumn("{task.fields[speed]}"),
            TimeRemainingColumn(),
            console=err_console,
            disable=not (self.main and self.recipe.log.progress),
        )

    def _print_plan(self) -> None:
        if not self.main:
            return
        from ..core.params import count_params

        r, lm = self.recipe, self.layer_map
        c = count_params(self.student)
        trainable = sum(p.numel() for p in self.params)
        lines = [
            f"teacher   {self.teacher_path} ({lm.n_teacher} layers)",
            f"student   {lm.n_student} layers, kept {list(lm.kept)}; {trainable / 1e6:.1f}M of "
            f"{c.trainable / 1e6:.1f}M parameters trained"
            + (f"; frozen: {', '.join(self.frozen)}" if self.frozen else ""),
            f"loss      ce {r.loss.ce} + kl {r.loss.kl} (τ={r.loss.temperature}) + cos {self.loss_fn.cos_weight:.4g} × "
            f"{len(self.loss_fn.pairs)} pairs; {'fused head' if self.mode == 'head' else 'full logits'}, "
            f"chunks of {r.loss.chunk_tokens} tokens",
            f"data      {self.data_desc}; seq_len {r.data.seq_len}"
            + (
                f"; validation: the first {len(self.eval_blocks)} blocks ({self.eval_blocks.n_tokens:,} tokens) "
                f"of {self.eval_slice['source']}"  # type: ignore[index]
                if self.eval_blocks is not None
                else ""
            ),
            f"schedule  {self.total_steps} steps × {r.train.batch_size} sequences (≈{self.tokens_per_step:,.0f} "
            f"tokens/step, {self.total_steps * self.tokens_per_step / 1e6:.2f}M total); {self.world} process(es) × "
            f"{r.train.micro_batch_size} × {self.accum} accumulation; {self.precision}; lr {r.optim.lr} "
            f"{r.optim.schedule}, warm-up {self.warmup}",
            f"output    {self.out}",
        ]
        if self.resume_from is not None:
            lines.append(f"resumed   from {self.resume_from} (step {self.state.step})")
        _console().print("\n".join(lines), highlight=False)

    def _finish(self) -> dict[str, Any]:
        from .initialise import save_student

        acc, s = self.acc, self.state
        acc.wait_for_everyone()
        student_dir = self.out / "student"
        if self.fsdp:
            state_dict = acc.get_state_dict(self.s_mod)
        summary: dict[str, Any] = {}
        if self.main:
            model = acc.unwrap_model(self.s_mod).model
            if self.fsdp:
                model.load_state_dict({k.removeprefix("model."): v for k, v in state_dict.items()})
            section = dict(model.config.boomerang or {})
            section["distill"] = {
                "recipe": self.recipe.name,
                "steps": s.step,
                "tokens": s.tokens,
                "val_ppl": s.last_eval["ppl"] if s.last_eval else None,
            }
            model.config.boomerang = section
            if self.recipe.train.gradient_checkpointing:
                model.gradient_checkpointing_disable()
            self._undo_lean()
            model.config.use_cache = True
            dtype = self.save_dtype or torch.float32
            save_student(model.to(dtype), student_dir, tokenizer=self.tokenizer, force=True)
            recent = [h for h in s.history[-10:] if not h.get("skipped")]
            summary = {
                "out": str(self.out),
                "student": str(student_dir),
                "steps": s.step,
                "tokens": s.tokens,
                "seconds": round(s.elapsed, 1),
                "tokens_per_s": round(s.tokens / max(s.elapsed, 1e-9), 1),
                "skipped_steps": s.skipped,
                "train": {
                    k: round(float(np.mean([h[k] for h in recent])), 5) for k in ("loss", "ce", "kl", "cos")
                }
                if recent
                else None,
                "val_student": s.last_eval,
                "val_teacher": s.teacher_eval,
                "val_slice": self.eval_slice,
                "world_size": self.world,
            }
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
            if self.tb is not None:
                self.tb.close()
            self._print_summary(summary)
        acc.wait_for_everyone()
        return summary

    def _print_summary(self, summary: dict[str, Any]) -> None:
        from rich.table import Table

        t = Table(title="distillation summary", show_header=False)
        t.add_row("steps / tokens", f"{summary['steps']} / {summary['tokens']:,}")
        t.add_row("time", f"{summary['seconds']:.0f} s ({summary['tokens_per_s']:,.0f} tokens/s)")
        if summary["train"]:
            t.add_row("train (last 10 steps)", ", ".join(f"{k} {v:.4f}" for k, v in summary["train"].items()))
        if summary["val_student"]:
            v = summary["val_student"]
            t.add_row("validation (student)", f"loss {v['loss']:.4f}, ce {v['ce']:.4f}, ppl {v['ppl']:.2f}")
        if summary["val_teacher"]:
            t.add_row("validation (teacher)", f"ppl {summary['val_teacher']['ppl']:.2f}")
        t.add_row("skipped steps", str(summary["skipped_steps"]))
        t.add_row("student", summary["student"])
        _console().print(t)


def _console() -> Any:
    from ..ui import console

    return console


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def distill(
    recipe: Recipe, *, out: str | Path | None = None, resume: bool = False, force: bool = False
) -> dict:
    """Run a recipe; returns the summary (written to OUT/summary.json as well)."""
    threads = torch.get_num_threads()
    try:
        return Distiller(recipe, out=out, resume=resume, force=force).run()
    finally:
        torch.set_num_threads(threads)  # train.threads applies to the run only
