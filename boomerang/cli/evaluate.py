"""``boomerang eval`` (perplexity, pseudo-perplexity, lm-eval) and ``boomerang sweep`` (whole families)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..errors import BoomerangError
from . import validate
from .common import Dtype, LayerMapPreset, Layers, Trust, console, err_console, parse_ints

# Heavy modules (torch, transformers, lm-eval) are imported inside the commands so that `boomerang --help` is instant.

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


def _tasks(tasks: str | None) -> list[str]:
    return validate.names(tasks, "--tasks") if tasks is not None else []


def _check_numbers(**options: Any) -> None:
    """The integer options eval and sweep share (``None`` = the default)."""
    validate.at_least(2, context=options.pop("context"))
    validate.at_least(0, offset=options.pop("offset"), num_fewshot=options.pop("num_fewshot"))
    validate.fraction_or_count("limit", options.pop("limit"))
    validate.positive(**options)


def _limit(limit: float | None) -> int | float | None:
    return int(limit) if limit is not None and limit >= 1 else limit


def _spec(**kw: Any) -> Any:
    from ..evaluate.perplexity import EvalSpec

    return EvalSpec(**kw)


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
    metric: Metric = "auto",
    context: Context = None,
    stride: Stride = None,
    offset: Offset = 0,
    max_tokens: MaxTokens = None,
    max_docs: MaxDocs = None,
    bos: Bos = False,
    eos: Eos = False,
    batch_size: BatchSize = None,
    text_field: TextField = "text",
    tasks: Tasks = None,
    include_path: IncludePath = None,
    task_data: TaskData = None,
    limit: Limit = None,
    num_fewshot: Fewshot = None,
    lm_eval_batch_size: LmBatch = 8,
    cloze_n: ClozeN = 200,
    cloze_words: ClozeWords = 64,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the results to this JSON file.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the --json file.")] = False,
    dtype: Dtype = "auto",
    trust_remote_code: Trust = False,
) -> None:
    """Perplexity of one model on an exact slice of text, and/or lm-eval tasks (offline-capable)."""
    from ..evaluate.perplexity import check_source
    from ..io.loading import load_config

    task_list = _tasks(tasks)
    if data is None and not task_list:
        raise BoomerangError("give --data for perplexity and/or --tasks for lm-eval")
    _check_numbers(
        context=context, stride=stride, offset=offset, max_tokens=max_tokens, max_docs=max_docs,
        batch_size=batch_size, limit=limit, num_fewshot=num_fewshot, lm_eval_batch_size=lm_eval_batch_size,
        cloze_n=cloze_n, cloze_words=cloze_words,
    )  # fmt: skip
    if json_out is not None:
        validate.output_file(json_out, force)
    validate.text_source(data, "--data", text_field)
    validate.text_source(task_data, "--task-data", text_field)
    validate.text_field(data, text_field)
    if data is not None:
        check_source(data)
    if task_data is not None:
        check_source(task_data)
    validate.model_source(model, "MODEL")
    validate.tokenizer_source(tokenizer or model, "--tokenizer" if tokenizer else "MODEL")
    if tokenizer is not None:
        validate.model_source(tokenizer, "--tokenizer")
    cfg = load_config(model, trust_remote_code=trust_remote_code)
    spec = _spec(
        metric=metric, context=context, stride=stride, offset=offset, max_tokens=max_tokens, max_docs=max_docs,
        add_bos=bos, add_eos=eos, batch_size=batch_size, text_field=text_field,
    ).resolved(cfg)  # fmt: skip
    runner = None
    if task_list:
        from ..evaluate.lmeval import BUILTIN_TASKS, LMEval

        runner = LMEval(
            task_list,
            include_path=include_path or (),
            batch_size=lm_eval_batch_size,
            limit=_limit(limit),
            num_fewshot=num_fewshot,
        )
        if any(t in BUILTIN_TASKS for t in runner.tasks) and (task_data or data) is None:
            raise BoomerangError("the built-in tasks are generated from text: give --data or --task-data")
        from ..evaluate.perplexity import is_encoder

        if is_encoder(cfg):
            raise BoomerangError(
                "lm-eval tasks need a causal LM; masked LMs are evaluated by pseudo-perplexity"
            )

    import tempfile

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..evaluate.lmeval import prepare_builtin
    from ..evaluate.perplexity import evaluate as run_eval
    from ..io.loading import load_model, load_tokenizer

    m = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    tok = load_tokenizer(tokenizer or model, trust_remote_code=trust_remote_code)
    report: dict[str, Any] = {"model": model}
    if data is not None:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=err_console, transient=True,
        ) as bar:  # fmt: skip
            task = bar.add_task("batches", total=None)
            res = run_eval(
                m, data, tok, **{k: v for k, v in spec.settings().items()},
                progress=lambda i, n: bar.update(task, completed=i, total=n),
            )  # fmt: skip
        t = Table(title=res.label, show_header=False)
        t.add_row(res.metric, f"[bold]{res.value:.4f}[/]")
        t.add_row("mean NLL per scored token (nats)", f"{res.nll:.5f}")
        t.add_row("scored tokens", str(res.scored))
        t.add_row("slice", escape(res.slice_text()))
        for k, v in res.settings.items():
            if v is not None:
                t.add_row(k, str(v))
        console.print(t)
        report["perplexity"] = res.to_json()
    if runner is not None:
        with tempfile.TemporaryDirectory(prefix="boomerang-tasks-") as work:
            runner.add_include_path(
                prepare_builtin(
                    runner.tasks,
                    task_data or data,
                    work,
                    n=cloze_n,
                    context_words=cloze_words,
                    text_field=text_field,
                )
            )
            lm = runner.run(m, tok)
        console.print(_lm_table(lm))
        report["lm_eval"] = lm
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
    metric: Metric = "auto",
    tasks: Tasks = None,
    include_path: IncludePath = None,
    task_data: TaskData = None,
    limit: Limit = None,
    num_fewshot: Fewshot = None,
    lm_eval_batch_size: LmBatch = 8,
    cloze_n: ClozeN = 200,
    cloze_words: ClozeWords = 64,
    context: Context = None,
    stride: Stride = None,
    offset: Offset = 0,
    max_tokens: MaxTokens = None,
    max_docs: MaxDocs = None,
    bos: Bos = False,
    eos: Eos = False,
    batch_size: BatchSize = None,
    text_field: TextField = "text",
    calibration: Annotated[
        str | None,
        typer.Option(help="Calibration text for shortgpt/laco and data-driven orders (default: --data)."),
    ] = None,
    calibration_samples: Annotated[
        int, typer.Option("--calibration-samples", help="Calibration blocks (of 256 tokens).")
    ] = 128,
    layers: Layers = None,
    layer_map: LayerMapPreset = None,
    reuse: Annotated[
        bool, typer.Option("--reuse/--no-reuse", help="Compute shared layer prefixes once per batch.")
    ] = True,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard an interrupted sweep's saved progress and start over.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
    dtype: Dtype = "auto",
    trust_remote_code: Trust = False,
) -> None:
    """Evaluate a whole family (and baselines) at every size; write results, a table and sweep.png."""
    from ..core.arch import n_layers
    from ..io.loading import load_config
    from ..pipelines.sweep import BASELINES, Sweep, TaskOptions, partial_dir
    from .common import resolve_layer_map

    validate.output_dir(out, force)
    _check_numbers(
        context=context, stride=stride, offset=offset, max_tokens=max_tokens, max_docs=max_docs,
        batch_size=batch_size, limit=limit, num_fewshot=num_fewshot, lm_eval_batch_size=lm_eval_batch_size,
        cloze_n=cloze_n, cloze_words=cloze_words, calibration_samples=calibration_samples,
    )  # fmt: skip
    validate.order_option(order)
    chosen = parse_ints(sizes, "--sizes")
    methods = validate.names(baselines, "--baselines", BASELINES) if baselines is not None else []
    for source, option, field in (
        (data, "--data", text_field),
        (calibration, "--calibration", "text"),
        (task_data, "--task-data", text_field),
    ):
        validate.text_source(source, option, field)
    validate.text_field(data, text_field)
    for spec, option in (
        (teacher, "--teacher"),
        (student, "--student"),
        (random_student, "--random-student"),
    ):
        if spec is not None:
            validate.model_source(spec, option)
    validate.tokenizer_source(teacher, "--teacher")
    lm = None
    if layers is not None or layer_map:
        lm = resolve_layer_map(
            student,
            load_config(student),
            layers=layers,
            preset=layer_map,
            n_teacher=n_layers(load_config(teacher)),
        )
    job = Sweep(
        teacher,
        student,
        data,
        out,
        layer_map=lm,
        order=order,
        sizes=chosen,
        baselines=methods,
        random_student=random_student,
        spec=_spec(
            metric=metric,
            context=context,
            stride=stride,
            offset=offset,
            max_tokens=max_tokens,
            max_docs=max_docs,
            add_bos=bos,
            add_eos=eos,
            batch_size=batch_size,
            text_field=text_field,
        ),
        tasks=TaskOptions(
            tasks=_tasks(tasks),
            include_path=include_path or (),
            data=task_data,
            batch_size=lm_eval_batch_size,
            limit=_limit(limit),
            num_fewshot=num_fewshot,
            builtin={"n": cloze_n, "context_words": cloze_words, "text_field": text_field},
        ),
        calibration=calibration,
        calibration_samples=calibration_samples,
        dtype=dtype,
        force=force,
        restart=restart,
        reuse=reuse,
        progress=True,
        trust_remote_code=trust_remote_code,
    )
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


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
    app.command()(sweep)
