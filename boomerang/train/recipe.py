"""Distillation recipes: a validated YAML file plus ``key=value`` overrides.

Every section rejects unknown keys with a did-you-mean suggestion. Overrides use dotted keys
(``train.steps=20``, ``loss.kl=0``); a bare key that names exactly one setting also works (``steps=20``).
Values are parsed as YAML (``null``, ``true``, ``[0.9, 0.95]``). Relative paths are relative to the current
directory; ``~`` and ``$VARS`` are expanded. A recipe is a YAML file or the name of one that ships with the package
(``boomerang/recipes/``: ``smollm2-cpu``, the paper's ``qwen3-8b``, ...). The teacher ``smollm2-offline`` is the
project's offline SmolLM2.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..errors import BoomerangError
from ..io.loading import OFFLINE_ALIAS as OFFLINE_TEACHER  # noqa: F401 (re-exported)
from ..io.loading import expand_alias
from ..io.textfile import link_loop, read_text_file
from .losses import LossConfig
from .recipe_values import DuplicateKey, check_values, load_yaml, nonfinite


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


MAX_LAYERS = 4096  # no model has more layers: a bound for layer indices in settings
MEASURED = ("similarity", "shortgpt")  # init strategies that measure the teacher on calibration data
InitStrategy = Literal["every", "layers", "random", "similarity", "shortgpt"]
STRATEGIES: tuple[str, ...] = get_args(InitStrategy)


@dataclass(frozen=True)
class Spelling:
    """How a front end names the init settings in its messages: recipe keys (``init.max_block``, ``strategy:
    shortgpt``) or command-line options (``--max-block``, ``--strategy shortgpt``)."""

    options: bool = False
    renames: dict[str, str] = field(default_factory=dict)  # setting -> option, where they differ
    keywords: bool = False  # Python keyword arguments (``max_block``, ``strategy='shortgpt'``)

    def name(self, key: str) -> str:
        """``init.max_block``, ``--max-block`` or ``max_block``."""
        if self.keywords:
            return key
        if not self.options:
            return f"init.{key}"
        return "--" + self.renames.get(key, key).replace("_", "-")

    def setting(self, key: str, value: object) -> str:
        """``strategy: layers``, ``--strategy layers`` or ``strategy='layers'``."""
        if self.keywords:
            return f"{key}={value!r}"
        return f"{self.name(key)} {value}" if self.options else f"{key}: {value}"


RECIPE_KEYS = Spelling()
OPTIONS = Spelling(options=True, renames={"calibration": "data"})  # ``boomerang init``'s options
KEYWORDS = Spelling(keywords=True)  # ``boomerang.train.initialise.init_student``'s arguments


def check_init_rules(
    strategy: str,
    layers: Sequence[int] | None,
    max_block: int | None,
    isolate: int,
    spelling: Spelling = RECIPE_KEYS,
) -> None:
    """Which init settings go with which strategy: the one rule, checked where an ``InitSection`` is made and on
    ``init_student``'s arguments. A BoomerangError is a ValueError, so in a validator pydantic reports it."""
    name, setting = spelling.name, spelling.setting
    if strategy == "layers" and not layers:
        raise BoomerangError(f"{name('strategy')} 'layers' needs {name('layers')} (the kept teacher layers)")
    if layers and strategy != "layers":
        raise BoomerangError(
            f"{name('layers')} cannot be combined with {setting('strategy', strategy)}; use "
            f"{setting('strategy', 'layers')}"
        )
    for key, given in (("max_block", max_block is not None), ("isolate", bool(isolate))):
        if given and strategy != "shortgpt":
            raise BoomerangError(
                f"{name(key)} only applies to {setting('strategy', 'shortgpt')}, not {strategy!r}"
            )


class InitSection(_Section):
    """How the student is initialised when ``student`` is not given (see ``boomerang.train.initialise``).

    Its rules (which settings go with which strategy) are checked here, once, where it is made; validated with
    ``context={"spelling": OPTIONS}`` the messages name command-line options instead of recipe keys."""

    strategy: InitStrategy = "every"
    every: int = Field(2, ge=1)
    keep_first: int = Field(1, ge=1)
    keep_last: int = Field(2, ge=0)
    layers: list[int] | None = None
    size: int | None = Field(
        None,
        ge=1,
        description="student layers for the similarity and shortgpt strategies (default: as many as every)",
    )
    max_block: int | None = Field(
        None, ge=1, description="shortgpt: the longest teacher block one student layer may stand for"
    )
    isolate: int = Field(
        0,
        ge=0,
        le=64,
        description="shortgpt: give the first N layers ShortGPT drops a 2-layer block each, so the members 1..N "
        "layers short of the teacher start as ShortGPT's models of their size",
    )
    calibration: str | None = Field(
        None, description="calibration texts for similarity and shortgpt (default: data.train)"
    )
    calibration_texts: int = Field(128, ge=1)
    calibration_length: int = Field(256, ge=2)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> InitSection:
        spelling: Spelling = (info.context or {}).get("spelling", RECIPE_KEYS)
        check_init_rules(self.strategy, self.layers, self.max_block, self.isolate, spelling)
        return self


class DataSection(_Section):
    train: str = Field(description="training texts: file, folder, .jsonl, or hf:NAME[:CONFIG][@SPLIT]")
    eval: str | None = Field(None, description="held-out texts for the validation loss")
    heldout_docs: int = Field(0, ge=0, description="hold out the first N training documents for validation")
    text_field: str = "text"
    seq_len: int = Field(2048, ge=2)
    packing: bool = Field(True, description="pack documents with EOS separators; false = pad/truncate each")
    streaming: bool | None = Field(None, description="stream the source (default: only for hf: sources)")
    shuffle_buffer: int = Field(10_000, ge=1, description="streaming shuffle buffer, in blocks")
    skip_docs: int = Field(0, ge=0, description="skip the first N documents (after the held-out ones)")
    add_bos: bool = False
    cache_dir: str | None = Field(
        None, description="token cache directory (default ~/.cache/boomerang/tokens)"
    )

    @model_validator(mode="after")
    def _check(self) -> DataSection:
        if self.eval and self.heldout_docs:
            raise ValueError("set either data.eval or data.heldout_docs, not both")
        return self


class OptimSection(_Section):
    lr: float = Field(3e-4, gt=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.01, ge=0, le=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr as a fraction of lr (cosine/linear)")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables clipping")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must be in [0, 1), got {list(v)}")
        return v


class TrainSection(_Section):
    batch_size: int = Field(2048, ge=1, description="global batch, in sequences per optimizer step")
    micro_batch_size: int = Field(2, ge=1, description="sequences per forward pass on each process")
    steps: int | None = Field(500, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="stop after this many training tokens")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = 0
    gradient_checkpointing: bool = False
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="several processes: ddp replicates both models; fsdp shards both (FSDP2); auto is fsdp under "
        "accelerate launch with an FSDP config, else ddp",
    )
    freeze_embeddings: bool = False
    freeze_head: bool = Field(
        False, description="freeze the LM head (with tied embeddings: the shared matrix)"
    )
    freeze_final_norm: bool = False
    freeze_layers: list[int] | None = Field(
        None, description="student layers (indices) whose weights stay as initialised"
    )

    @field_validator("freeze_layers")
    @classmethod
    def _layer_indices(cls, v: list[int] | None) -> list[int] | None:
        if v and not all(0 <= i < MAX_LAYERS for i in v):
            raise ValueError(f"student layer indices are 0..{MAX_LAYERS - 1}, got {v}")
        return sorted(set(v)) if v else None

    untie_head: bool = Field(
        False, description="give a tied student its own LM head (a copy of the embedding)"
    )
    lean_mlp: bool = Field(
        True, description="keep half of each gated MLP's activations, recompute the rest (exact; see lean.py)"
    )
    bf16_copies: bool | None = Field(
        None,
        description="under bf16: run the student's forward and backward on bf16 copies of its layers (fp32 "
        "master weights for the optimizer) instead of casting every weight on every forward; default: on, "
        "except under FSDP",
    )
    compile: bool = Field(False, description="torch.compile the student")
    attention: Literal["auto", "sdpa", "matmul"] = Field(
        "auto",
        description="attention of the training passes: matmul = two bf16 matmuls and a softmax with a hand-written "
        "backward (train/attention.py), faster than SDPA's CPU kernel in bf16; sdpa = transformers' default; "
        "auto = matmul on a CPU in bf16, else sdpa",
    )
    fused_loss: bool | None = Field(
        None, description="CE/KL from hidden states + head, chunked (default: auto)"
    )
    max_nonfinite: int = Field(10, ge=0, description="abort after this many skipped non-finite steps")
    threads: int | None = Field(None, ge=1, description="torch CPU threads per process")
    teacher_cache: str | None = Field(
        None,
        description="directory of teacher outputs shared by runs that see the same batches (ablations): the "
        "first run writes them, later runs read them instead of running the teacher (one process only)",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainSection:
        if self.steps is None and self.max_tokens is None:
            raise ValueError("set train.steps or train.max_tokens")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be a multiple of train.micro_batch_size "
                f"({self.micro_batch_size})"
            )
        return self

    def frozen(self) -> list[str]:
        """The freeze settings that are on, as recipe keys."""
        on = [k for k in ("freeze_embeddings", "freeze_head", "freeze_final_norm") if getattr(self, k)]
        return [f"train.{k}" for k in on + (["freeze_layers"] if self.freeze_layers else [])]


class EvalSection(_Section):
    every: int = Field(50, ge=0, description="validate every N steps (0: only at the end)")
    blocks: int = Field(64, ge=0, description="validation blocks (0 disables validation)")
    batch_size: int | None = Field(None, ge=1)
    teacher: bool = Field(True, description="also measure the teacher once, for reference")


class CheckpointSection(_Section):
    every: int = Field(100, ge=0, description="checkpoint every N steps (0: never)")
    keep: int = Field(3, ge=1, description="keep the last K checkpoints")


class LogSection(_Section):
    every: int = Field(1, ge=1)
    tensorboard: bool | None = Field(None, description="default: on if tensorboard is installed")
    progress: bool = True


class Recipe(_Section):
    """A complete distillation run."""

    name: str | None = None
    notes: str | None = Field(None, description="why the recipe is as it is (quoted in the demo's report)")
    teacher: str
    student: str | None = Field(None, description="an initialised student checkpoint; default: use init")
    patch_order: Literal["last", "first"] = Field("last", description="recorded in the student's config")
    init: InitSection = InitSection()
    data: DataSection
    loss: LossConfig = LossConfig()
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    checkpoint: CheckpointSection = CheckpointSection()
    log: LogSection = LogSection()
    out: str | None = None

    @model_validator(mode="after")
    def _check_frozen_random(self) -> Recipe:
        if not self.student and self.init.strategy == "random":
            check_frozen_random({"init": {"strategy": "random"}}, self.train)
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def run_dir(self, out: str | Path | None = None) -> Path:
        """Where a run of this recipe writes: ``out``, else the recipe's ``out``, else ``runs/NAME``."""
        return Path(out or self.out or Path("runs") / (self.name or "distill"))


def check_frozen_layers(layers: Sequence[int] | None, n_layers: int, student: str = "the student") -> None:
    """``train.freeze_layers`` must name layers that ``student`` (with ``n_layers`` layers) has."""
    bad = [i for i in layers or () if i >= n_layers]
    if bad:
        raise BoomerangError(
            f"train.freeze_layers names student layers {bad}, but {student} has layers 0..{n_layers - 1}"
        )


def check_frozen_random(section: Mapping[str, Any] | None, train: TrainSection) -> None:
    """Refuse to freeze a student whose weights are random and untrained (its ``boomerang`` config section says
    so): the frozen parts would stay random, a handicapped model with no error."""
    section = section or {}
    init = section.get("init") or {}
    random = init.get("strategy") == "random" or bool(init.get("random_weights"))
    frozen = train.frozen()
    if random and "distill" not in section and frozen:
        raise BoomerangError(
            f"the student's weights are random (a random-init student, not yet distilled), but {', '.join(frozen)} "
            "would keep parts of it random; set "
            + " ".join(f"{k}={'[]' if k.endswith('layers') else 'false'}" for k in frozen)
        )


# ---- loading ------------------------------------------------------------------------------------------------


def _fields(model: type[BaseModel], prefix: str = "") -> dict[str, bool]:
    """Every dotted setting name -> whether it is a section."""
    out: dict[str, bool] = {}
    for name, f in model.model_fields.items():
        ann = f.annotation
        is_section = isinstance(ann, type) and issubclass(ann, BaseModel)
        out[prefix + name] = is_section
        if is_section:
            out.update(_fields(ann, prefix + name + "."))  # type: ignore[arg-type]
    return out


FIELDS = _fields(Recipe)
LEAVES = [k for k, sec in FIELDS.items() if not sec]


def _suggest(key: str) -> str:
    """A did-you-mean hint for an unknown dotted key."""
    tail = key.rpartition(".")[2]
    close = [k for k in LEAVES if k.rsplit(".", 1)[-1] == tail]  # right name, wrong section
    close = close or difflib.get_close_matches(key, list(FIELDS), n=1, cutoff=0.6)
    if not close:  # match the last component alone, preferring the same section
        section, _, tail = key.rpartition(".")
        names = difflib.get_close_matches(
            tail, sorted({k.rsplit(".", 1)[-1] for k in LEAVES}), n=1, cutoff=0.6
        )
        if names:
            cands = [k for k in LEAVES if k.rsplit(".", 1)[-1] == names[0]]
            close = [k for k in cands if k.startswith(section + ".")] or cands
    return f"; did you mean {close[0]!r}?" if close else ""


def _resolve_key(key: str) -> str:
    if key in FIELDS:
        return key
    by_tail = [k for k in LEAVES if k.rsplit(".", 1)[-1] == key]
    if "." not in key and len(by_tail) == 1:
        return by_tail[0]
    if len(by_tail) > 1:
        raise BoomerangError(f"override {key!r} is ambiguous: write one of {', '.join(by_tail)}")
    raise BoomerangError(f"unknown recipe key {key!r}{_suggest(key)}")


def merge_overrides(overrides: list[str] | None, named: dict[str, object]) -> list[str]:
    """``key=value`` overrides followed by the ``named`` settings that are not ``None`` (``{"train.steps": 20}``,
    what options such as ``--steps`` set); a key set twice (``steps=0 --steps 1``, ``kl=1 loss.kl=0``) is refused,
    for the last would win in silence."""
    merged = [*(overrides or []), *(f"{k}={v}" for k, v in named.items() if v is not None)]
    seen: dict[str, str] = {}
    for item in merged:
        key = item.partition("=")[0].strip()
        by_tail = [k for k in LEAVES if k.rsplit(".", 1)[-1] == key]
        key = by_tail[0] if key not in FIELDS and "." not in key and len(by_tail) == 1 else key
        if key in seen:
            raise BoomerangError(
                f"recipe key {key} is set twice ({seen[key]!r} and {item!r}; options such as --steps set keys too); "
                "give it once"
            )
        seen[key] = item
    return merged


def apply_overrides(data: Mapping[str, object], overrides: list[str]) -> dict[str, Any]:
    """A copy of a raw recipe dict with ``key=value`` pairs (dotted keys, YAML values) set."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise BoomerangError(f"cannot read override {item!r}: write key=value, e.g. train.steps=20")
        path = _resolve_key(key.strip())
        try:
            value = load_yaml(raw) if raw.strip() else None
        except DuplicateKey as e:
            raise BoomerangError(f"override {item!r}: {e}") from None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = path.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return data


def _format_errors(e: ValidationError, where: str) -> BoomerangError:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key{_suggest(loc)}")
        elif err["type"] == "missing":
            lines.append(f"{loc}: required but missing")
        else:
            msg = str(err.get("ctx", {}).get("error") or err["msg"]).removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, dict) or got is None or repr(got) in msg else f" (got {got!r})"
            lines.append(f"{loc or 'recipe'}: {msg}{shown}")
    return BoomerangError(f"invalid recipe {where}:\n  - " + "\n  - ".join(lines))


def _expand(value: str | None) -> str | None:
    if value is None or value.startswith("hf:"):
        return value
    return os.path.expanduser(os.path.expandvars(value))


def parse_recipe(
    data: Mapping[str, object], overrides: list[str] | None = None, *, where: str = ""
) -> Recipe:
    """Validate a raw recipe dict (after applying overrides)."""
    if not isinstance(data, dict):
        raise BoomerangError(f"recipe {where} must be a YAML mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, list(overrides or []))
    problems = check_values(Recipe, data)  # types as declared, finite numbers, usable integers
    if problems:
        raise BoomerangError(f"invalid recipe {where or '(inline)'}:\n  - " + "\n  - ".join(problems))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise _format_errors(e, where or "(inline)") from None
    bad = nonfinite(recipe.model_dump())
    if bad:
        raise BoomerangError(f"invalid recipe {where or '(inline)'}: {', '.join(bad)} must be finite numbers")
    recipe = recipe.model_copy(
        update={
            "teacher": _expand(recipe.teacher),
            "student": _expand(recipe.student),
            "out": _expand(recipe.out),
        }
    )
    recipe.data.train = _expand(recipe.data.train)  # type: ignore[assignment]
    recipe.data.eval = _expand(recipe.data.eval)
    return recipe


def packaged_recipes() -> list[str]:
    """The names of the recipes that ship with the package (``boomerang/recipes/NAME.yaml``)."""
    folder = files("boomerang").joinpath("recipes")
    return sorted(f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml"))


def _recipe_text(spec: str | Path) -> tuple[str, str, str]:
    """``(text, where, stem)`` of a recipe file, or of a packaged recipe named ``NAME`` (or ``NAME.yaml``)."""
    path = Path(spec).expanduser()
    if path.is_file() or link_loop(path):
        return read_text_file(path, "the recipe", "give a recipe YAML file"), str(path), path.stem
    name = str(spec).removesuffix(".yaml")
    names = packaged_recipes()
    if name in names:
        return files("boomerang").joinpath("recipes", f"{name}.yaml").read_text(), f"{name} (packaged)", name
    close = difflib.get_close_matches(path.stem, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise BoomerangError(
        f"recipe {spec} does not exist{hint}; pass a recipe YAML file or a packaged recipe: {', '.join(names)}"
    )


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe: a YAML file, or the name of a packaged recipe (``smollm2-cpu``).

    Errors are BoomerangErrors naming the key and the fix.
    """
    text, where, stem = _recipe_text(path)
    try:
        data = load_yaml(text) or {}
    except DuplicateKey as e:
        raise BoomerangError(f"recipe {where}: {e}") from None
    except yaml.YAMLError as e:
        raise BoomerangError(f"recipe {where} is not valid YAML: {e}") from None
    recipe = parse_recipe(data, overrides, where=where)
    if recipe.name is None:
        recipe.name = stem
    return recipe


def resolve_model_spec(spec: str) -> str:
    """A model spec, with ``smollm2-offline`` replaced by the converted offline teacher's directory."""
    return expand_alias(spec)
