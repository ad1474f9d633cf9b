"""Out-of-core building: write an intermediate checkpoint straight from the teacher's and student's safetensors.

Neither model is instantiated. The checkpoints' headers say where every tensor's bytes are; the output's exact
tensor set comes from a weightless (meta-device) model of the output config, with tied duplicates dropped the way
``save_pretrained`` drops them; ``arch.route`` says which input tensor each output tensor is. Tensors are copied
byte-for-byte (``copy_file_range``, see ``safetensors_files``) or, when the dtype changes, read one at a time,
converted and written. Peak memory is about the largest tensor, whatever the model size, and the result is
bit-identical to the in-memory ``patch(...)`` followed by ``save_pretrained`` (same files, same bytes).

For canonical checkpoints ``fastbuild.FastBuilder`` writes the same bytes without importing torch or transformers;
``fastbuild.open_builder`` and ``fastbuild.stream_build`` choose between the two (both builders derive from
``builder.Builder``).

Input keys are mapped to model names with transformers' own loading rules (``rename_source_key``), so checkpoints
without the base-model prefix (the original GPT-2's ``h.0...``), legacy names (``LayerNorm.gamma``) and renamed
heads (GPT-NeoX's ``embed_out``) are read exactly as ``from_pretrained`` reads them.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import (
    WeightConverter,
    WeightRenaming,
    dot_natural_key,
    revert_weight_conversion,
)
from transformers.modeling_utils import remove_tied_weights_from_state_dict

from ..core.arch import FOREIGN_STUDENTS, Arch, n_layers, route
from ..core.configs import check_compatible
from ..core.encoders import bert_names, synthesized
from ..core.layermap import LayerMap
from ..core.params import ParamCount, meta_model, plan_config, plan_params
from ..core.plan import PatchPlan
from ..errors import BoomerangError
from .atomic import check_writable  # noqa: F401 (re-exported)
from .builder import Builder
from .checkpoints import (  # noqa: F401 (re-exported)
    check_free_space,
    common_dtype_name,
    dtype_name,
    expand_alias,
    fmt_bytes,
    is_local_safetensors,
)
from .consistency import check_checkpoint, model_names
from .loading import load_config, load_tokenizer, parse_dtype, save_tokenizer
from .safetensors_files import (  # noqa: F401 (re-exported)
    DEFAULT_SHARD_SIZE,
    INDEX,
    ST_DTYPES,
    WEIGHTS,
    OutTensor,
    ProgressFn,
    TensorRef,
    parse_shard_size,
    read_header,
    read_tensors,
    write_safetensors,
    write_weights,
)
from .sidecar import read_layer_map
from .snapshot import HeldFile, snapshot_of

if TYPE_CHECKING:
    from ..hints import Config, Model

TORCH_DTYPES: dict[str, torch.dtype] = {st: getattr(torch, name) for st, (name, _) in ST_DTYPES.items()}
ST_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


class StreamUnsupported(BoomerangError):
    """The checkpoints can be built in memory, but not streamed (e.g. the model needs weight conversions)."""


def _conversions(model: Any) -> tuple[list[Any], list[Any]]:
    """transformers' key renamings and weight converters for a model class (as ``from_pretrained`` uses them)."""
    mapping = get_model_conversion_mapping(model)
    return (
        [m for m in mapping if isinstance(m, WeightRenaming)],
        [m for m in mapping if isinstance(m, WeightConverter)],
    )


class Checkpoint:
    """A local safetensors checkpoint opened lazily: its config, and where every tensor's bytes are."""

    def __init__(self, path: str | os.PathLike, *, trust_remote_code: bool = False) -> None:
        self.path = Path(expand_alias(path)).expanduser()
        if not self.path.exists():
            raise BoomerangError(f"{path} does not exist")
        self.snapshot = snapshot_of(self.path)  # held before the first read: one version, or a clear stop
        self.config = load_config(self.path, trust_remote_code=trust_remote_code)
        self.entries, self.index_metadata = read_tensors(self.path, self.snapshot)
        self._named: dict[str, TensorRef] | None = None
        self._meta: Any = None
        check_checkpoint(self.path, self.config, self.entries, self.meta)

    @property
    def meta(self) -> Any:
        """A weightless model of this checkpoint's own class."""
        if self._meta is None:
            self._meta = meta_model(self.config)
        return self._meta

    @property
    def dtype(self) -> torch.dtype:
        """The dtype ``from_pretrained(..., dtype="auto")`` (its default) loads this checkpoint in."""
        cfg_dtype = getattr(self.config, "dtype", None)
        if cfg_dtype is not None:
            return cfg_dtype if isinstance(cfg_dtype, torch.dtype) else parse_dtype(str(cfg_dtype))
        if "dtype" in self.index_metadata:
            return parse_dtype(str(self.index_metadata["dtype"]))
        first_file = min(ref.file for ref in self.entries.values() if ref.file is not None)
        first = read_header(first_file, self.snapshot.file(first_file.name))
        dtypes = [TORCH_DTYPES[first[k].dtype] for k in sorted(first)]
        floats = [d for d in dtypes if d.is_floating_point]
        return floats[0] if floats else torch.get_default_dtype()

    def named(self) -> dict[str, TensorRef]:
        """Tensors under the model class's own state-dict names, renamed exactly as ``from_pretrained`` does."""
        if self._named is not None:
            return self._named

        meta = self.meta
        expected = meta.state_dict()
        names = model_names(self.entries, meta)
        out: dict[str, TensorRef] = {}
        for key in sorted(self.entries, key=dot_natural_key):
            name, converted = names[key]
            if name not in expected:
                continue  # unused keys (e.g. GPT-2's old attention-mask buffers) are ignored, as on load
            if converted:
                raise StreamUnsupported(
                    f"{self.path}: tensor {key!r} needs a weight conversion when loaded; it cannot be streamed"
                )
            out.setdefault(name, self.entries[key])
        # tied parameters are stored once: every name of a tied group can be served by whichever one is on disk
        groups: dict[int, list[str]] = defaultdict(list)
        for name, p in meta.named_parameters(remove_duplicate=False):
            groups[id(p)].append(name)
        for names in groups.values():
            have = [n for n in names if n in out]
            for n in names:
                if n not in out and have:
                    out[n] = out[have[0]]
        self._named = out
        return out

    def canonical(self, arch: Arch, teacher_config: Config) -> dict[str, TensorRef]:
        """Tensors under the teacher architecture's names (a DistilBERT student is renamed into BERT's layout)."""
        named = self.named()
        kind = self.config.model_type
        if kind == arch.model_type:
            return named
        if (arch.model_type, kind) not in FOREIGN_STUDENTS:
            raise BoomerangError(f"cannot use a {kind} model with a {arch.model_type} teacher")
        out = {new: ref for name, ref in named.items() for new in bert_names(name)}
        ref = out["bert.embeddings.word_embeddings.weight"]
        dtype = TORCH_DTYPES[ref.dtype]
        for name, make in synthesized(teacher_config).items():
            shape = make(torch.empty(0, dtype=dtype, device="meta"))
            out[name] = TensorRef(
                dtype=ST_NAMES[shape.dtype],
                shape=tuple(shape.shape),
                key=f"<synthesized {name}>",
                make=lambda make=make, dt=dtype: make(torch.empty(0, dtype=dt)),
            )
        return out


# ---- converting tensors -----------------------------------------------------------------------------------


def _load(ref: TensorRef) -> torch.Tensor:
    if ref.make is not None:
        return ref.make()
    assert ref.file is not None
    held = ref.held or HeldFile(ref.file)  # the version whose header gave ref.start
    buf = bytearray(ref.nbytes)
    if buf and os.preadv(held.fd, [buf], ref.start) != len(buf):
        raise BoomerangError(f"{ref.file} ended early while reading {ref.key}; the file is truncated")
    dtype = TORCH_DTYPES[ref.dtype]
    if not buf:
        return torch.empty(ref.shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(ref.shape)


def convert(t: OutTensor) -> Any:
    """The bytes of ``t``'s source tensor converted to ``t.dtype`` (made first if it is synthesized)."""
    return _load(t.ref).to(TORCH_DTYPES[t.dtype]).contiguous().reshape(-1).view(torch.uint8).numpy()


def _saved_state(model: Any) -> dict[str, torch.Tensor]:
    """The state dict ``save_pretrained`` writes (ignored keys and tied duplicates dropped), before renaming."""
    state = model.state_dict()
    for key in model._keys_to_ignore_on_save or ():
        state.pop(key, None)
    return remove_tied_weights_from_state_dict(state, model)


def checkpoint_nbytes(config: Config, dtype: torch.dtype | None = None) -> int:
    """Bytes of weights ``save_pretrained`` writes for a model of ``config`` loaded in ``dtype``."""
    return sum(t.numel() * t.element_size() for t in _saved_state(meta_model(config, dtype)).values())


def saved_names(model: Model) -> dict[str, str]:
    """For a (meta) model: file name -> state-dict name of every tensor ``save_pretrained`` writes, in its order."""
    state = _saved_state(model)
    _, converters = _conversions(model)
    if converters:
        raise StreamUnsupported(
            f"{type(model).__name__} converts weights when saving ({converters[0]!r}); it cannot be streamed"
        )
    ids = {id(t): name for name, t in state.items()}
    saved = revert_weight_conversion(model, dict(state))
    return {out: ids[id(t)] for out, t in saved.items()}


# ---- building ---------------------------------------------------------------------------------------------


class StreamBuilder(Builder):
    """A teacher/student pair of local safetensors checkpoints, ready to write any member of their family.

    Opening reads only configs and safetensors headers; ``write(plan, directory)`` writes one member. The member's
    tensors, their order and its config come from transformers (a weightless model of the member), so any
    checkpoint ``from_pretrained`` reads is handled; ``fastbuild.FastBuilder`` writes the same bytes without
    torch for canonical checkpoints.
    """

    def __init__(
        self,
        teacher: str | os.PathLike,
        student: str | os.PathLike,
        layer_map: LayerMap | None = None,
        *,
        dtype: str | torch.dtype | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        for role, spec in (("teacher", teacher), ("student", student)):
            if not is_local_safetensors(spec):
                if not Path(spec).expanduser().exists():
                    raise BoomerangError(f"{spec} does not exist")
                raise StreamUnsupported(
                    f"the {role} {spec} is not a local checkpoint directory with safetensors weights; "
                    "streaming needs both models on disk (build in memory instead)"
                )
        self.trust_remote_code = trust_remote_code
        self.teacher = Checkpoint(teacher, trust_remote_code=trust_remote_code)
        self.student = Checkpoint(student, trust_remote_code=trust_remote_code)
        tcfg, scfg = self.teacher.config, self.student.config
        self.arch = check_compatible(tcfg, scfg)
        if layer_map is None:
            layer_map = read_layer_map(self.student.path, scfg)
        if layer_map is None:
            raise BoomerangError(
                f"the student {student} carries no layer map (no 'boomerang' config section and no "
                "student_config.json); pass layer_map=LayerMap.from_kept([...]) or --layers"
            )
        layer_map.check_fits(n_layers(tcfg), n_layers(scfg))
        self.layer_map: LayerMap = layer_map
        wanted = parse_dtype(dtype)
        # theirs, or for a mixed pair the wider of the two (e.g. a bf16 student, fp32 teacher)
        if wanted is None:
            td, sd = self.teacher.dtype, self.student.dtype
            wanted = getattr(
                torch, common_dtype_name(dtype_name(td) or "float32", dtype_name(sd) or "float32")
            )
        self.dtype: torch.dtype = wanted
        self._views: dict[str, dict[str, TensorRef]] | None = None
        self._tokenizer: Any = None
        self._generation: Any = None
        # fail now (not half-way through a family) if transformers would convert weights on load or save
        saved_names(self.teacher.meta)
        _ = self.views

    @property
    def views(self) -> dict[str, dict[str, TensorRef]]:
        if self._views is None:
            tcfg = self.teacher.config
            self._views = {
                "teacher": self.teacher.canonical(self.arch, tcfg),
                "student": self.student.canonical(self.arch, tcfg),
            }
        return self._views

    def config(self, plan: PatchPlan) -> Any:
        """The config.json of the member, as ``save_pretrained`` writes it for the in-memory build."""
        self._check_plan(plan)
        cfg = plan_config(self.teacher.config, self.student.config, plan)
        cfg.dtype = str(self.dtype).split(".")[1]
        return cfg

    def _check_plan(self, plan: PatchPlan) -> None:
        plan.layer_map.check_fits(n_layers(self.teacher.config), n_layers(self.student.config))

    def tensors(self, plan: PatchPlan, config: Config | None = None) -> tuple[list[OutTensor], Any]:
        """Every output tensor (in save order) with its source, and the member's meta model."""
        cfg = config if config is not None else self.config(plan)
        meta = meta_model(cfg, self.dtype)
        expected = meta.state_dict()
        views = self.views
        out: list[OutTensor] = []
        for file_name, name in saved_names(meta).items():
            who, src = route(name, self.arch, plan.sources, plan.embed_source, plan.head_source)
            ref = views[who].get(src)
            if ref is None:
                ckpt = self.teacher if who == "teacher" else self.student
                raise BoomerangError(
                    f"the {who} checkpoint {ckpt.path} has no tensor {src!r} (needed for {name!r})"
                )
            target = expected[name]
            if tuple(target.shape) != ref.shape:
                raise BoomerangError(
                    f"shape mismatch for {name}: {ref.shape} from the {who}, expected {tuple(target.shape)}"
                )
            out.append(OutTensor(file_name, ref, ST_NAMES[target.dtype]))
        return out, meta

    def nbytes(self, plan: PatchPlan) -> int:
        return sum(t.nbytes for t in self.tensors(plan)[0])

    def params(self, plan: PatchPlan) -> ParamCount:
        self._check_plan(plan)
        return plan_params(self.teacher.config, self.student.config, plan)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.teacher.path, trust_remote_code=self.trust_remote_code)
        return self._tokenizer

    @property
    def generation_config(self) -> Any:
        """The teacher's generation config, loaded as ``from_pretrained`` loads it."""
        if self._generation is None:
            try:
                self._generation = GenerationConfig.from_pretrained(self.teacher.path)
            except OSError:
                self._generation = GenerationConfig.from_pretrained(
                    self.teacher.path, config_file_name="config.json", _from_model_config=True
                )
        return self._generation

    _convert = staticmethod(convert)

    def _write_configs(self, plan: PatchPlan, directory: Path) -> tuple[list[OutTensor], int]:
        cfg = self.config(plan)
        tensors, meta = self.tensors(plan, cfg)
        cfg.architectures = [type(meta).__name__]
        cfg.save_pretrained(directory)
        if meta.can_generate():
            self.generation_config.save_pretrained(directory)
        return tensors, meta.num_parameters()

    def _write_tokenizer(self, directory: Path) -> None:
        save_tokenizer(directory, self.teacher.path, trust_remote_code=self.trust_remote_code)
