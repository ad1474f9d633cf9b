"""``boomerang eval`` (perplexity, pseudo-perplexity, lm-eval) and ``boomerang sweep`` (whole families)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..core.layermap import LayerMap
from ..evaluate.lmeval import CLOZE_EXAMPLES, CLOZE_WORDS, TaskOptions
from ..evaluate.spec import EvalSpec
from ..pipelines.sweep_inputs import BASELINES, BaselineOptions, CalibrationOptions, RunOptions
from . import validate
from .common import Dtype, LayerMapPreset, Layers, Trust, console, err_console, parse_ints, resolve_layer_map

# Heavy modules (torch, transformers, lm-eval) are imported inside the commands so that `boomerang --help` is instant;
# the option objects (and so the defaults) come from torch-free modules.

Metric = Annotated[
    str,
    typer.Option(
        help="ppl (token perplexity, causal LMs), pppl (pseudo-perplexity, masked LMs) or auto (by model)."
    ),
]
Context = Annotated[
    int | None,
    typer.Option(help="Window length in tokens (default min(1024, model positions); 512 for pppl)."),
]
Stride = Annotated[
    int | None, typer.Option(help="New tokens scored per window, 1..context-1 (default context/2).")
]
Offset = Annotated[int, typer.Option(help="Skip this many tokens of the data before the slice.")]
MaxTokens = Annotated[
    int | None, typer.Option("--max-tokens", help="Evaluate at most this many tokens (the slice length).")
]
MaxDocs = Annotated[int | None, typer.Option("--max-docs", help="Read at most this many documents.")]
Bos = Annotated[
    bool, typer.Option("--bos/--no-bos", help="Put the tokenizer's BOS before each document (then scored).")
]
Eos = Annotated[bool, typer.Option("--eos/--no-eos", help="Append EOS to each document and score it.")]
BatchSize = Annotated[
    int | None,
    typer.Option("--batch-size", help="Windows (ppl, default 4) or masked copies (pppl, 64) per pass."),
]
TextField = Annotated[str, typer.Option("--text-field", help="Text field of .jsonl / hf: sources.")]
Tasks = Annotated[
    str | None,
    typer.Option(
        help="lm-eval tasks, comma-separated: boomerang_cloze, boomerang_wordppl (built from local text), task "
        "YAML files, tasks in --include-path folders, lm-eval task names, or the paper's suites "
        "paper-classification, paper-perplexity, paper-generation, paper (all)."
    ),
]
IncludePath = Annotated[
    list[Path] | None,
    typer.Option("--include-path", help="Folder of custom lm-eval task YAML files (repeatable)."),
]
TaskData = Annotated[
    str | None, typer.Option("--task-data", help="Text for the built-in tasks (default: --data).")
]
Limit = Annotated[float | None, typer.Option(help="lm-eval: examples per task (a fraction if < 1).")]
Fewshot = Annotated[int | None, typer.Option("--num-fewshot", help="lm-eval: few-shot examples.")]
LmBatch = Annotated[int, typer.Option("--lm-eval-batch-size", help="lm-eval batch size.")]
ClozeN = Annotated[int, typer.Option("--cloze-n", help="boomerang_cloze: number of examples.")]
ClozeWords = Annotated[
    int, typer.Option("--cloze-words", help="boomerang_cloze: words of context per example.")
]


def _task_options(
    *,
    tasks: str | None,
    include_path: list[Path] | None,
    data: str | None,
    batch_size: int,
    limit: float | None,
    num_fewshot: int | None,
    cloze_n: int,
    cloze_words: int,
    text_field: str,
) -> TaskOptions:
    """The lm-eval options of eval and sweep (no ``--tasks``: no lm-eval)."""
    return TaskOptions(
        tasks=validate.names(tasks, "--tasks") if tasks is not None else [],
        include_path=include_path or (),
        data=data,
        batch_size=batch_size,
        limit=limit,
        num_fewshot=num_fewshot,
        builtin={"n": cloze_n, "context_words": cloze_words, "text_field": text_field},
    )


def _check_numbers(spec: EvalSpec, tasks: TaskOptions, **more: int | None) -> None:
    """The integer options eval and sweep share (``None`` = the default), then ``more``: each must be >= 1."""
    validate.at_least(2, context=spec.context)
    validate.at_least(0, offset=spec.offset, num_fewshot=tasks.num_fewshot)
    validate.fraction_or_count("limit", tasks.limit)
    validate.positive(
        stride=spec.stride, max_tokens=spec.max_tokens, max_docs=spec.max_docs, batch_size=spec.batch_size,
        lm_eval_batch_size=tasks.batch_size, cloze_n=tasks.builtin["n"], cloze_words=tasks.builtin["context_words"],
        **more,
    )  # fmt: skip


def _check_sources(text_field: str, models: dict[str, str | None], **texts: str | None) -> None:
    """Text sources (``--data`` takes ``text_field``, ``--calibration`` plain text) and model sources by option."""
    for name, source in texts.items():
        option = "--" + name.replace("_", "-")
        validate.text_source(source, option, "text" if name == "calibration" else text_field)
    validate.text_field(texts["data"], text_field)
    for option, spec in models.items():
        if spec is not None:
            validate.model_source(spec, option)


@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[int, int], None]]:
    """A transient batches bar on stderr; yields the ``progress(i, n)`` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("batches", total=None)
        yield lambda i, n: bar.update(task, completed=i, total=n)


def _ppl_table(res: Any) -> Table:
    from rich.markup import escape

    t = Table(title=res.label, show_header=False)
    t.add_row(res.metric, f"[bold]{res.value:.4f}[/]")
    t.add_row("mean NLL per scored token (nats)", f"{res.nll:.5f}")
    t.add_row("scored tokens", str(res.scored))
    t.add_row("slice", escape(res.slice_text()))
    for k, v in res.settings.items():
        if v is not None:
            t.add_row(k, str(v))
    return t


def _lm_table(results: dict[str, dict[str, float]]) -> Table:
    from ..evaluate.lmeval import metric_label

    t = Table(title="lm-eval results (lm-evaluation-harness metrics; not boomerang's token perplexity)")
    for col in ("task", "metric", "value", "meaning"):
        t.add_column(col, justify="right" if col == "value" else "left")
    for task, metrics in results.items():
        for name, value in metrics.items():
            t.add_row(task, name, f"{value:.4f}", metric_label(name))
    return t


def _sweep_table(result: dict[str, Any]) -> Table:
    from ..pipelines.sweep import lm_eval_columns
    from ..ui import fmt_count, fmt_metric

    rows, metric = result["rows"], result["metric"]["name"]
    extra = lm_eval_columns(rows)
    t = Table(title=f"{result['metric']['label']}, {result['order']['name']} order")
    for col in ("method", "K", "layers", "params", metric, *[c.removeprefix("boomerang_") for c in extra]):
        t.add_column(col, justify="left" if col == "method" else "right", overflow="fold")
    for r in rows:
        t.add_row(
            r["method"] + (f" ({r['role']})" if r.get("role") else ""),
            str(r["K"]),
            "" if r.get("layers") is None else str(r["layers"]),
            fmt_count(r["inference"]) if r.get("inference") else "",
            fmt_metric(r.get(metric)),
            *[fmt_metric(r.get(c)) for c in extra],
        )
    return t


def evaluate(
    model: Annotated[str, typer.Argument(help="Checkpoint directory, .gguf file or Hub id.")],
    data: Annotated[
        str | None, typer.Option(help="Text: file, folder, .jsonl or hf:NAME[:CONFIG][@SPLIT].")
    ] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer (default: the model's).")] = None,
    metric: Metric = EvalSpec.metric,
    context: Context = None,
    stride: Stride = None,
    offset: Offset = EvalSpec.offset,
    max_tokens: MaxTokens = None,
    max_docs: MaxDocs = None,
    bos: Bos = EvalSpec.add_bos,
    eos: Eos = EvalSpec.add_eos,
    batch_size: BatchSize = None,
    text_field: TextField = EvalSpec.text_field,
    tasks: Tasks = None,
    include_path: IncludePath = None,
    task_data: TaskData = None,
    limit: Limit = None,
    num_fewshot: Fewshot = None,
    lm_eval_batch_size: LmBatch = TaskOptions.batch_size,
    cloze_n: ClozeN = CLOZE_EXAMPLES,
    cloze_words: ClozeWords = CLOZE_WORDS,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the results to this JSON file.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the --json file.")] = False,
    dtype: Dtype = "auto",
    trust_remote_code: Trust = False,
) -> None:
    """Perplexity of one model on an exact slice of text, and/or lm-eval tasks (offline-capable)."""
    task_opts = _task_options(
        tasks=tasks, include_path=include_path, data=task_data, batch_size=lm_eval_batch_size, limit=limit,
        num_fewshot=num_fewshot, cloze_n=cloze_n, cloze_words=cloze_words, text_field=text_field,
    )  # fmt: skip
    spec = EvalSpec(
        metric=metric, context=context, stride=stride, offset=offset, max_tokens=max_tokens, max_docs=max_docs,
        add_bos=bos, add_eos=eos, batch_size=batch_size, text_field=text_field,
    )  # fmt: skip
    _check_numbers(spec, task_opts)
    if json_out is not None:
        validate.output_file(json_out, force)
    _check_sources(text_field, {"MODEL": model}, data=data, task_data=task_data)
    validate.tokenizer_source(tokenizer or model, "--tokenizer" if tokenizer else "MODEL")
    if tokenizer is not None:
        validate.model_source(tokenizer, "--tokenizer")
    from ..pipelines.evaluation import Evaluation

    job = Evaluation(
        model, data, tokenizer=tokenizer, spec=spec, tasks=task_opts, dtype=dtype, trust_remote_code=trust_remote_code
    )  # fmt: skip
    report: dict[str, Any] = {"model": model}
    if data is not None:
        with _progress_bar() as progress:
            res = job.perplexity(progress)
        console.print(_ppl_table(res))
        report["perplexity"] = res.to_json()
    if job.runner is not None:
        report["lm_eval"] = job.lm_eval()
        console.print(_lm_table(report["lm_eval"]))
    if json_out is not None:
        from ..io.atomic import atomic_write_text

        atomic_write_text(json_out, json.dumps(report, indent=1) + "\n", force=force)
        console.print(f"[green]wrote[/] {json_out}")


def sweep(
    teacher: Annotated[str, typer.Option(help="Teacher checkpoint (directory, .gguf or Hub id).")],
    student: Annotated[str, typer.Option(help="Distilled student checkpoint.")],
    data: Annotated[str, typer.Option(help="Evaluation text: file, folder, .jsonl or hf:NAME.")],
    out: Annotated[Path, typer.Option(help="Output directory (written when the sweep completes).")],
    order: Annotated[
        str | None,
        typer.Option(
            help="Patch order: last, first, a JSON order file or list ([3,2,1,0]), similarity, greedy-kl, "
            "shortest-path, optimal. "
            "Default: the order the student records (init writes it), else last."
        ),
    ] = None,
    sizes: Annotated[
        str | None, typer.Option(help="Family sizes K to evaluate, e.g. 0,4,8 or 0-16 (default: all).")
    ] = None,
    baselines: Annotated[
        str | None, typer.Option(help="Comma-separated: naive, shortgpt, laco, random-student.")
    ] = None,
    random_student: Annotated[
        str | None,
        typer.Option(
            "--random-student", help="Randomly initialised, distilled student (random-student baseline)."
        ),
    ] = None,
    metric: Metric = EvalSpec.metric,
    tasks: Tasks = None,
    include_path: IncludePath = None,
    task_data: TaskData = None,
    limit: Limit = None,
    num_fewshot: Fewshot = None,
    lm_eval_batch_size: LmBatch = TaskOptions.batch_size,
    cloze_n: ClozeN = CLOZE_EXAMPLES,
    cloze_words: ClozeWords = CLOZE_WORDS,
    context: Context = None,
    stride: Stride = None,
    offset: Offset = EvalSpec.offset,
    max_tokens: MaxTokens = None,
    max_docs: MaxDocs = None,
    bos: Bos = EvalSpec.add_bos,
    eos: Eos = EvalSpec.add_eos,
    batch_size: BatchSize = None,
    text_field: TextField = EvalSpec.text_field,
    calibration: Annotated[
        str | None,
        typer.Option(help="Calibration text for shortgpt/laco and data-driven orders (default: --data)."),
    ] = CalibrationOptions.data,
    calibration_samples: Annotated[
        int, typer.Option("--calibration-samples", help="Calibration blocks (of 256 tokens).")
    ] = CalibrationOptions.samples,
    layers: Layers = None,
    layer_map: LayerMapPreset = None,
    reuse: Annotated[
        bool, typer.Option("--reuse/--no-reuse", help="Compute shared layer prefixes once per batch.")
    ] = RunOptions.reuse,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard an interrupted sweep's saved progress and start over.")
    ] = RunOptions.restart,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = RunOptions.force,
    dtype: Dtype = "auto",
    trust_remote_code: Trust = False,
) -> None:
    """Evaluate a whole family (and baselines) at every size; write results, a table and sweep.png."""
    validate.output_dir(out, force)
    task_opts = _task_options(
        tasks=tasks, include_path=include_path, data=task_data, batch_size=lm_eval_batch_size, limit=limit,
        num_fewshot=num_fewshot, cloze_n=cloze_n, cloze_words=cloze_words, text_field=text_field,
    )  # fmt: skip
    spec = EvalSpec(
        metric=metric, context=context, stride=stride, offset=offset, max_tokens=max_tokens, max_docs=max_docs,
        add_bos=bos, add_eos=eos, batch_size=batch_size, text_field=text_field,
    )  # fmt: skip
    _check_numbers(spec, task_opts, calibration_samples=calibration_samples)
    validate.order_option(order)
    chosen = parse_ints(sizes, "--sizes")
    methods = validate.names(baselines, "--baselines", BASELINES) if baselines is not None else []
    models = {"--teacher": teacher, "--student": student, "--random-student": random_student}
    _check_sources(text_field, models, data=data, calibration=calibration, task_data=task_data)
    validate.tokenizer_source(teacher, "--teacher")
    from ..pipelines.sweep import Sweep, partial_dir

    job = Sweep(
        teacher, student, data, out, layer_map=_layer_map(teacher, student, layers, layer_map), order=order,
        sizes=chosen, baselines=BaselineOptions(methods, random_student), spec=spec, tasks=task_opts,
        calibration=CalibrationOptions(calibration, calibration_samples),
        run=RunOptions(force=force, restart=restart, reuse=reuse, progress=True),
        dtype=dtype, trust_remote_code=trust_remote_code,
    )  # fmt: skip
    try:
        result = job.run()
    except KeyboardInterrupt:
        err_console.print(
            f"[yellow]interrupted[/]: progress is saved in {partial_dir(out)}; run the same command again to resume "
            "(or add --restart to start over)"
        )
        raise typer.Exit(130) from None
    console.print(_sweep_table(result))
    console.print(f"[green]wrote[/] {out}/ (results.json, results.csv, results.md, sweep.png, order.json)")


def _layer_map(teacher: str, student: str, layers: str | None, preset: str | None) -> LayerMap | None:
    """The layer map --layers / --layer-map give (checked against the student's own), else None: the student's."""
    if layers is None and not preset:
        return None
    from ..core.arch import n_layers
    from ..io.loading import load_config

    student_config = load_config(student)
    n_teacher = n_layers(load_config(teacher))
    return resolve_layer_map(student, student_config, layers=layers, preset=preset, n_teacher=n_teacher)


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
    app.command()(sweep)
