"""One model's evaluation (``boomerang eval``): perplexity on an exact slice of text and/or lm-eval tasks.

``Evaluation(model, data, spec=EvalSpec(...), tasks=TaskOptions(...))`` checks everything it can before any weights
load (the data, the settings against the model's config, the task names); ``perplexity()`` and ``lm_eval()`` then
load the model once and run. The built-in lm-eval tasks are generated from ``tasks.data`` (default: ``data``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BoomerangError
from ..evaluate.lmeval import BUILTIN_TASKS, LMEval, TaskOptions, prepare_builtin
from ..evaluate.perplexity import PerplexityResult, Source, check_source, evaluate
from ..evaluate.spec import EvalSpec, is_encoder
from ..io.loading import load_model, load_tokenizer
from .sweep_inputs import model_config

if TYPE_CHECKING:
    from ..hints import DType, ModelSpec, Tokenizer


class Evaluation:
    """Perplexity (``data`` given) and lm-eval (``tasks.tasks`` given) of one model: checked on construction.

    ``model``: a checkpoint (directory, .gguf file or Hub id) or an in-memory model (then pass ``tokenizer``).
    ``spec``: what the perplexity is computed on (``EvalSpec``, resolved here against the model's config).
    """

    def __init__(
        self,
        model: ModelSpec,
        data: Source | None = None,
        *,
        tokenizer: Tokenizer | str | Path | None = None,
        spec: EvalSpec | None = None,
        tasks: TaskOptions | None = None,
        dtype: DType | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.tasks = tasks or TaskOptions()
        if data is None and not self.tasks.tasks:
            raise BoomerangError("give --data for perplexity and/or --tasks for lm-eval")
        for source in (data, self.tasks.data):
            if source is not None:
                check_source(source)
        self.model, self.data, self.tokenizer = model, data, tokenizer
        self.dtype, self.trust_remote_code = dtype, trust_remote_code
        config = model_config(model, trust_remote_code=trust_remote_code)
        self.spec = (spec or EvalSpec()).resolved(config)
        self.runner: LMEval | None = None
        if self.tasks.tasks:
            t = self.tasks
            self.runner = LMEval(
                t.tasks,
                include_path=t.include_path,
                batch_size=t.batch_size,
                limit=t.limit,
                num_fewshot=t.num_fewshot,
            )
            if any(name in BUILTIN_TASKS for name in self.runner.tasks) and (t.data or data) is None:
                raise BoomerangError("the built-in tasks are generated from text: give --data or --task-data")
            if is_encoder(config):
                raise BoomerangError(
                    "lm-eval tasks need a causal LM; masked LMs are evaluated by pseudo-perplexity"
                )
        self._loaded: tuple[Any, Any] | None = None

    def load(self) -> tuple[Any, Any]:
        """The model and its tokenizer, loaded on first use."""
        if self._loaded is None:
            tr, model, tok = self.trust_remote_code, self.model, self.tokenizer
            if isinstance(model, (str, Path)):
                tok = tok if tok is not None else model
                model = load_model(model, dtype=self.dtype, trust_remote_code=tr)
            elif tok is None:
                raise BoomerangError("pass the tokenizer for an in-memory model (tokenizer=... or a path)")
            if isinstance(tok, (str, Path)):
                tok = load_tokenizer(tok, trust_remote_code=tr)
            self._loaded = (model, tok)
        return self._loaded

    def perplexity(self, progress: Callable[[int, int], None] | None = None) -> PerplexityResult:
        """The metric of ``spec`` on ``data``; ``progress(i, n)`` after each of the ``n`` batches."""
        if self.data is None:
            raise BoomerangError("perplexity needs evaluation data: --data PATH")
        model, tok = self.load()
        return evaluate(model, self.data, tok, self.spec, progress=progress)

    def lm_eval(self) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` of the tasks (the built-in ones generated into a temporary folder)."""
        if self.runner is None:
            return {}
        model, tok = self.load()
        source = self.tasks.data or self.data
        with tempfile.TemporaryDirectory(prefix="boomerang-tasks-") as work:
            self.runner.add_include_path(
                prepare_builtin(self.runner.tasks, source, work, **self.tasks.builtin)
            )
            return self.runner.run(model, tok)
