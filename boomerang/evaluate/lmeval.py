"""lm-evaluation-harness on in-memory models, offline.

* Any lm-eval task list runs on an in-memory model through ``HFLM(pretrained=model, tokenizer=...)``.
* Hub datasets are unreachable offline, so custom task YAML files that read local jsonl are supported: pass
  their folder as ``include_path`` or the YAML file itself as a task.
* Two built-in tasks are generated from any local text into jsonl + YAML and then run by lm-eval itself:

  - ``boomerang_cloze``: LAMBADA-style last-word prediction. Each example is a passage of ``context_words``
    words followed by the word that ends a sentence (letters and digits, trailing punctuation removed); by default the
    word must also occur earlier in the passage, in the spirit of LAMBADA's filtering (answerable from context).
    Metrics: ``acc`` (the target's greedy continuation is exact) and lm-eval's ``perplexity`` of the target word.
  - ``boomerang_wordppl``: lm-eval's rolling log-likelihood over passages of the text (like its ``wikitext``
    task). Metrics: ``word_perplexity`` (per whitespace-separated word), ``byte_perplexity``, ``bits_per_byte``.

Named suites expand in any task list (``PRESETS``): the paper's ``paper-classification`` (10 tasks),
``paper-perplexity`` (``wikitext``), ``paper-generation`` (``gsm8k_cot``, ``ifeval``, ``hendrycks_math``) and
``paper`` (all 14), as the reference code (dcml-lab/boomerang-distillation, ``evaluate/evaluate.py``) lists them.
Before lm-eval runs, the model's ``generation_config.max_new_tokens``, ``temperature`` and ``top_p`` are set to None
(and restored afterwards), as the reference does: otherwise a checkpoint's own generation defaults override
lm-eval's (transformers lets ``max_new_tokens`` take precedence over lm-eval's ``max_length``).

lm-eval's word perplexity is *not* boomerang's token perplexity (``boomerang.evaluate.perplexity``): it divides the same
kind of log-likelihood by words instead of tokens and uses lm-eval's own windows. Results keep the two apart and
label them (``metric_label``).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import random
import re
import string
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BoomerangError, require
from ..io.atomic import atomic_write_text

# Lazy imports: lm-eval is an optional extra, and the CLI reads TaskOptions at start-up, so lm_eval and the
# torch modules are imported inside the functions that run tasks.
if TYPE_CHECKING:
    from ..hints import Model, Tokenizer
    from .perplexity import Source

CLOZE = "boomerang_cloze"
WORDPPL = "boomerang_wordppl"
BUILTIN_TASKS = (CLOZE, WORDPPL)
CLOZE_EXAMPLES = 200  # boomerang_cloze: test examples
CLOZE_WORDS = 64  # boomerang_cloze: words of context per example

# The paper's task suites, as the reference code lists them (evaluate/evaluate.py: DEFAULT_CLASSIFICATION_TASKS,
# DEFAULT_PERPLEXITY_TASKS, DEFAULT_GENERATIVE_TASKS; its README's full suite is the three in this order).
PAPER_CLASSIFICATION = (
    "arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "winogrande", "race", "mmlu", "rte",
)  # fmt: skip
PAPER_PERPLEXITY = ("wikitext",)
PAPER_GENERATION = ("gsm8k_cot", "ifeval", "hendrycks_math")
PRESETS: dict[str, tuple[str, ...]] = {
    "paper-classification": PAPER_CLASSIFICATION,
    "paper-perplexity": PAPER_PERPLEXITY,
    "paper-generation": PAPER_GENERATION,
    "paper": PAPER_CLASSIFICATION + PAPER_PERPLEXITY + PAPER_GENERATION,
}
# Generation defaults a checkpoint may carry that would override lm-eval's own settings (cleared as the reference does)
GENERATION_RESETS = ("max_new_tokens", "temperature", "top_p")

METRIC_LABELS = {
    "word_perplexity": "lm-eval word perplexity (exp of NLL per whitespace-separated word)",
    "byte_perplexity": "lm-eval byte perplexity (exp of NLL per UTF-8 byte)",
    "bits_per_byte": "lm-eval bits per byte",
    "perplexity": "lm-eval target-word perplexity (exp of mean NLL of the target continuation)",
    "acc": "lm-eval accuracy",
    "acc_norm": "lm-eval length-normalised accuracy",
}


@dataclass(frozen=True)
class TaskOptions:
    """lm-eval settings for an eval or a sweep (``tasks`` empty: no lm-eval).

    ``tasks``: names as ``resolve_tasks`` takes them; ``include_path``: folders of task YAML files; ``data``: text
    for the built-in tasks (None: the evaluation data); ``batch_size``, ``limit`` (examples per task: a count, or a
    fraction if < 1; a count is kept as an int) and ``num_fewshot`` go to lm-eval; ``builtin``: options of
    ``make_cloze_task`` / ``make_wordppl_task`` (``n``, ``context_words``, ``text_field``, ...).
    """

    tasks: Sequence[str] = ()
    include_path: Sequence[str | Path] = ()
    data: Any = None
    batch_size: int = 8
    limit: int | float | None = None
    num_fewshot: int | None = None
    builtin: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        limit = self.limit
        if limit is not None and limit >= 1 and limit != float("inf"):
            object.__setattr__(self, "limit", int(limit))


# a word (with a letter), then . ! or ?
_END = re.compile(r"^(?P<word>[^\W_]*[^\W\d_][^\W_]*)[.!?]+[\"'”’)]*$")


def metric_label(metric: str) -> str:
    base = metric.split(",")[0]
    return METRIC_LABELS.get(base, f"lm-eval {base}")


# ---- the built-in tasks ------------------------------------------------------------------------------------


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def cloze_examples(
    source: Source,
    *,
    n: int = CLOZE_EXAMPLES,
    n_fewshot: int = 20,
    context_words: int = CLOZE_WORDS,
    seed: int = 0,
    require_in_context: bool = True,
    max_docs: int | None = None,
    text_field: str = "text",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(test, few-shot) cloze examples: non-overlapping passages, seeded choice, in document order."""
    from .perplexity import named_texts

    if n < 1 or context_words < 1:
        raise BoomerangError(f"the cloze task needs n >= 1 and context_words >= 1 (got {n}, {context_words})")
    candidates = []
    for name, text in named_texts(source, text_field=text_field, limit=max_docs):
        words = text.split()
        for i in range(context_words, len(words)):
            m = _END.match(words[i])
            if not m or len(m.group("word")) < 2:
                continue
            target = m.group("word")
            context = words[i - context_words : i]
            if require_in_context and target.lower() not in {
                w.strip(string.punctuation + "“”‘’").lower() for w in context
            }:
                continue
            candidates.append((name, i, " ".join([*context, target])))
    if not candidates:
        raise BoomerangError(
            f"no cloze examples found in the text (need sentences ending in a word after {context_words} words"
            + (", with the word seen earlier in the passage" if require_in_context else "")
            + "); use more text or a smaller context_words"
        )
    rng = random.Random(seed)
    rng.shuffle(candidates)
    taken: dict[str, list[tuple[int, int]]] = {}
    chosen = []
    for name, i, passage in candidates:
        span = (i - context_words, i)
        if any(not (span[1] < a or b < span[0]) for a, b in taken.get(name, [])):
            continue
        taken.setdefault(name, []).append(span)
        chosen.append({"text": passage, "document": name, "word_index": i})
        if len(chosen) >= n + n_fewshot:
            break
    test, shots = chosen[:n], chosen[n:]
    key = lambda r: (r["document"], r["word_index"])  # noqa: E731
    return sorted(test, key=key), sorted(shots, key=key)


def make_cloze_task(
    source: Source,
    out_dir: str | Path,
    *,
    name: str = CLOZE,
    n: int = CLOZE_EXAMPLES,
    n_fewshot: int = 20,
    context_words: int = CLOZE_WORDS,
    seed: int = 0,
    require_in_context: bool = True,
    max_docs: int | None = None,
    text_field: str = "text",
) -> Path:
    """Write a LAMBADA-style cloze task (``{name}.yaml`` and its jsonl) into ``out_dir``; returns the YAML path."""
    test, shots = cloze_examples(
        source,
        n=n,
        n_fewshot=n_fewshot,
        context_words=context_words,
        seed=seed,
        require_in_context=require_in_context,
        max_docs=max_docs,
        text_field=text_field,
    )
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    files = {"test": out / f"{name}.test.jsonl"}
    _write_jsonl(files["test"], test)
    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {}},
        "output_type": "loglikelihood",
        "test_split": "test",
        "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}",
        "doc_to_target": "{{' '+text.split(' ')[-1]}}",
        "target_delimiter": "",
        "metric_list": [
            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {
            "version": 1.0,
            "generated_by": "boomerang",
            "source": str(source),
            "n": len(test),
            "context_words": context_words,
            "seed": seed,
            "require_in_context": require_in_context,
        },
    }
    if shots:
        files["train"] = out / f"{name}.fewshot.jsonl"
        _write_jsonl(files["train"], shots)
        config["training_split"] = "train"
        config["fewshot_split"] = "train"
    config["dataset_kwargs"]["data_files"] = {k: str(v) for k, v in files.items()}
    path = out / f"{name}.yaml"
    path.write_text(_yaml(config))
    return path


def passages(text: str, words: int) -> Iterator[str]:
    """Consecutive passages of at least ``words`` words, cut at paragraph (blank-line) boundaries when possible."""
    buf: list[str] = []
    count = 0
    for para in re.split(r"\n\s*\n", text):
        if not para.strip():
            continue
        buf.append(para.strip())
        count += len(para.split())
        if count >= words:
            yield "\n\n".join(buf)
            buf, count = [], 0
    if buf:
        yield "\n\n".join(buf)


def make_wordppl_task(
    source: Source,
    out_dir: str | Path,
    *,
    name: str = WORDPPL,
    passage_words: int = 512,
    max_docs: int | None = None,
    text_field: str = "text",
) -> Path:
    """Write a rolling log-likelihood task over the text's passages (lm-eval word/byte perplexity)."""
    from .perplexity import named_texts

    rows = [
        {"text": p, "document": doc}
        for doc, text in named_texts(source, text_field=text_field, limit=max_docs)
        for p in passages(text, passage_words)
    ]
    if not rows:
        raise BoomerangError("the text source is empty: no passages for the word-perplexity task")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{name}.test.jsonl"
    _write_jsonl(data, rows)
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "output_type": "loglikelihood_rolling",
        "test_split": "test",
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "metric_list": [
            {"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
            {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
            {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False},
        ],
        "metadata": {
            "version": 1.0,
            "generated_by": "boomerang",
            "source": str(source),
            "passages": len(rows),
        },
    }
    path = out / f"{name}.yaml"
    path.write_text(_yaml(config))
    return path


# ---- task names: validation before any heavy work ---------------------------------------------------------


def expand_presets(tasks: Sequence[str]) -> list[str]:
    """The task list with every preset name (``PRESETS``) replaced by its tasks; each task kept once, in order."""
    out: list[str] = []
    for task in tasks:
        task = task.strip()
        for name in PRESETS.get(task, (task,)):
            if name and name not in out:
                out.append(name)
    return out


class _AnyTagLoader:
    """A YAML loader that accepts lm-eval's ``!function`` tags (as plain strings)."""

    @staticmethod
    def load(text: str) -> Any:
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        Loader.add_multi_constructor("", lambda loader, suffix, node: None)
        return yaml.load(text, Loader=Loader)  # a SafeLoader subclass


def yaml_task_name(path: Path) -> str:
    try:
        data = _AnyTagLoader.load(path.read_text())
    except Exception as e:
        raise BoomerangError(f"cannot read task file {path}: {e}") from None
    name = data.get("task") if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise BoomerangError(f"{path} is not an lm-eval task file (no top-level 'task: NAME')")
    return name


def _quiet_lm_eval() -> None:
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _default_task_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


_SCAN = re.compile(r"^[\"']?(task|group|tag)[\"']?\s*:\s*(.*)$")


def _quick_names() -> set[str]:
    """Task/group/tag names declared at the top level of lm-eval's own YAML files (a fast, partial index)."""
    names: set[str] = set()
    for p in _default_task_dir().rglob("*.yaml"):
        lines = p.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            m = _SCAN.match(line)
            if not m:
                continue
            value = m.group(2).split("#")[0].strip()
            if value.startswith("["):
                names.update(x.strip().strip("'\"") for x in value.strip("[]").split(","))
            elif value:
                names.add(value.strip("'\""))
            elif m.group(1) == "tag":
                for nxt in lines[i + 1 :]:
                    item = re.match(r"^\s*-\s*(\S+)", nxt)
                    if not item:
                        break
                    names.add(item.group(1).strip("'\""))
    return names


def _all_default_names() -> set[str]:
    """Every name lm-eval's own index knows (built once, ~30 s, then cached on disk per lm-eval version)."""
    import lm_eval

    from ..io.loading import DEFAULT_CACHE

    version = getattr(lm_eval, "__version__", "unknown")
    cache = DEFAULT_CACHE / f"lm_eval_tasks-{version}.json"
    with contextlib.suppress(OSError, ValueError):
        return set(json.loads(cache.read_text()))
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()
    names = set(TaskManager().all_tasks)
    with contextlib.suppress(OSError):
        atomic_write_text(cache, json.dumps(sorted(names)))
    return names


def _custom_names(include_path: Sequence[Path]) -> set[str]:
    if not include_path:
        return set()
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()
    return set(TaskManager(include_path=[str(p) for p in include_path], include_defaults=False).all_tasks)


def resolve_tasks(
    tasks: Sequence[str], include_path: Sequence[str | Path] = ()
) -> tuple[list[str], list[Path], bool]:
    """Validate a task list: ``(names, include paths, needs lm-eval's own tasks)``.

    A task is a built-in (``boomerang_cloze``, ``boomerang_wordppl``: generated later by ``prepare_builtin``), a
    preset (``PRESETS``, expanded here), a YAML file path, a task in an ``include_path`` folder, or one of
    lm-eval's own tasks. Unknown names raise a ``BoomerangError`` with close matches.
    """
    require("lm_eval", "eval", "running lm-eval tasks (--tasks)")
    paths = []
    for p in include_path:
        path = Path(p).expanduser()
        if not path.is_dir():
            raise BoomerangError(f"--include-path {p} is not a folder of lm-eval task YAML files")
        paths.append(path.resolve())
    names: list[str] = []
    pending: list[str] = []
    for task in expand_presets(tasks):
        if task in BUILTIN_TASKS:
            names.append(task)
        elif task.endswith((".yaml", ".yml")):
            path = Path(task).expanduser()
            if not path.is_file():
                raise BoomerangError(f"task file {task} does not exist")
            names.append(yaml_task_name(path))
            if path.parent.resolve() not in paths:
                paths.append(path.parent.resolve())
        else:
            names.append(task)
            pending.append(task)
    if not names:
        raise BoomerangError(
            "no tasks given; e.g. --tasks boomerang_cloze,boomerang_wordppl or a task YAML file"
        )
    custom = _custom_names(paths) if pending else set()
    unknown = [t for t in pending if t not in custom]
    needs_defaults = bool(unknown)
    if unknown:
        quick = _quick_names()
        unknown = [t for t in unknown if t not in quick]
    if unknown:
        known = _all_default_names() | custom
        unknown = [t for t in unknown if t not in known]
        if unknown:
            hints = {
                t: difflib.get_close_matches(t, sorted(known | set(BUILTIN_TASKS) | set(PRESETS)), n=3)
                for t in unknown
            }
            detail = "; ".join(
                f"{t!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for t, h in hints.items()
            )
            raise BoomerangError(
                f"unknown lm-eval task {detail}. Use a built-in task ({', '.join(BUILTIN_TASKS)}), a preset "
                f"({', '.join(PRESETS)}), a task YAML file, a folder of them with --include-path, or an lm-eval "
                "task name (Hub datasets need network)"
            )
    return names, paths, needs_defaults


def prepare_builtin(
    names: Sequence[str], data: Source | None, out_dir: str | Path, **options: Any
) -> list[Path]:
    """Generate the built-in tasks among ``names`` from ``data`` into ``out_dir``; returns include paths."""
    wanted = [n for n in names if n in BUILTIN_TASKS]
    if not wanted:
        return []
    if data is None:
        raise BoomerangError(
            f"the built-in tasks {wanted} are generated from text: give --data (or --task-data)"
        )
    cloze_opts = {
        k: v
        for k, v in options.items()
        if k in ("n", "n_fewshot", "context_words", "seed", "require_in_context", "max_docs", "text_field")
    }
    ppl_opts = {k: v for k, v in options.items() if k in ("passage_words", "max_docs", "text_field")}
    if CLOZE in wanted:
        make_cloze_task(data, out_dir, **cloze_opts)
    if WORDPPL in wanted:
        make_wordppl_task(data, out_dir, **ppl_opts)
    return [Path(out_dir).resolve()]


# ---- running ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _keep_tensors(model: Any) -> Iterator[None]:
    """HFLM calls ``model.tie_weights()``; make sure that cannot rebind any tensor of a shared (zero-copy) model."""
    from ..core.patching import _set_tensor, named_tensors

    before = named_tensors(model)
    try:
        yield
    finally:
        for name, t in named_tensors(model).items():
            if name in before and t is not before[name]:
                _set_tensor(model, name, before[name])


@contextlib.contextmanager
def lm_eval_generation(model: Model) -> Iterator[None]:
    """Clear ``GENERATION_RESETS`` in the model's generation config for the block (the reference sets them to None
    before lm-eval), then restore them: lm-eval's ``max_gen_toks`` and greedy decoding apply, not the checkpoint's."""
    config = getattr(model, "generation_config", None)
    if config is None:
        yield
        return
    saved = {k: getattr(config, k, None) for k in GENERATION_RESETS}
    try:
        for k in GENERATION_RESETS:
            setattr(config, k, None)
        yield
    finally:
        for k, v in saved.items():
            setattr(config, k, v)


class LMEval:
    """Runs lm-eval tasks on in-memory models; builds lm-eval's task index once and reuses it."""

    def __init__(
        self,
        tasks: Sequence[str],
        *,
        include_path: Sequence[str | Path] = (),
        batch_size: int = 8,
        limit: int | float | None = None,
        num_fewshot: int | None = None,
        needs_defaults: bool | None = None,
    ):
        names, paths, defaults = resolve_tasks(tasks, include_path)
        self.tasks = names
        self.include_path = paths
        self.needs_defaults = defaults if needs_defaults is None else needs_defaults
        self.batch_size = batch_size
        self.limit = limit
        self.num_fewshot = num_fewshot
        self._manager: Any = None

    def add_include_path(self, paths: Sequence[Path]) -> None:
        for p in paths:
            if p not in self.include_path:
                self.include_path.append(p)
        self._manager = None

    @property
    def manager(self) -> Any:
        if self._manager is None:
            from lm_eval.tasks import TaskManager

            _quiet_lm_eval()
            self._manager = TaskManager(
                include_path=[str(p) for p in self.include_path] or None, include_defaults=self.needs_defaults
            )
        return self._manager

    def run(self, model: Model, tokenizer: Tokenizer) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` (lm-eval's metric names, filter suffix dropped when it is ``none``)."""
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        from .perplexity import is_encoder

        if is_encoder(model.config):
            raise BoomerangError(
                "lm-eval tasks need a causal LM; masked LMs (BERT) are evaluated by pseudo-perplexity"
            )
        _quiet_lm_eval()
        was_training = model.training
        try:
            with _keep_tensors(model):
                lm_eval_model = HFLM(
                    pretrained=model,
                    tokenizer=tokenizer,
                    batch_size=self.batch_size,
                    device=str(model.device),
                )
            with _keep_tensors(model), lm_eval_generation(model):
                out = simple_evaluate(
                    model=lm_eval_model,
                    tasks=list(self.tasks),
                    task_manager=self.manager,
                    limit=self.limit,
                    num_fewshot=self.num_fewshot,
                    bootstrap_iters=0,
                    log_samples=False,
                )
        except BoomerangError:
            raise
        except Exception as e:
            raise BoomerangError(f"lm-eval failed on tasks {self.tasks}: {type(e).__name__}: {e}") from e
        finally:
            model.train(was_training)
        return tidy_results(out["results"]) if out else {}


def tidy_results(results: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, float]]:
    tidy: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        row = {}
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            row[metric if filt == "none" else f"{metric}[{filt}]"] = float(value)
        tidy[task] = row
    return tidy


def run_lm_eval(
    model: Model,
    tokenizer: Tokenizer,
    tasks: Sequence[str],
    *,
    data: Source | None = None,
    include_path: Sequence[str | Path] = (),
    batch_size: int = 8,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    work_dir: str | Path | None = None,
    **builtin_options: Any,
) -> dict[str, dict[str, float]]:
    """Run lm-eval ``tasks`` on an in-memory ``model``. Built-in tasks are generated from ``data`` into
    ``work_dir`` (a temporary folder if None)."""
    runner = LMEval(
        tasks, include_path=include_path, batch_size=batch_size, limit=limit, num_fewshot=num_fewshot
    )
    with contextlib.ExitStack() as stack:
        where = work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="boomerang-tasks-"))
        runner.add_include_path(prepare_builtin(runner.tasks, data, where, **builtin_options))
        return runner.run(model, tokenizer)
