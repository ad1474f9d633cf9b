"""``boomerang serve``: every member of a family from one process, over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import BoomerangError
from ..ui import fmt_count
from .common import Dtype, LayerMapPreset, Layers, OrderData, Trust, console, pair_layer_map
from .family import OrderOpt
from .validate import in_range, real

if TYPE_CHECKING:
    from ..core.layermap import LayerMap
    from ..serve.server import FamilyServer

Host = Annotated[
    str, typer.Option(help="Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).")
]
Port = Annotated[int, typer.Option(help="Port to listen on.")]
MaxLatency = Annotated[
    float | None,
    typer.Option(
        "--max-latency-ms",
        help="Enable model `auto`: the largest member whose estimated latency under the current load fits this "
        "budget (docs/serving.md).",
    ),
]
ChatTemplate = Annotated[
    Path | None,
    typer.Option("--chat-template", help="A Jinja chat template file to use instead of the tokenizer's own."),
]
Threads = Annotated[
    int | None, typer.Option("--threads", help="Torch threads for generation (default: torch's).")
]
Warm = Annotated[
    bool, typer.Option("--warm/--no-warm", help="Build every member and run it once before serving.")
]
Speculative = Annotated[
    bool,
    typer.Option(
        "--speculative/--no-speculative",
        help="Decode speculatively by default (a request's `speculative` field overrides it).",
    ),
]
Draft = Annotated[
    str, typer.Option("--draft", help="The member that drafts for speculative decoding: student or kN.")
]
MaxGamma = Annotated[int, typer.Option("--max-gamma", help="The most tokens the draft proposes per round.")]
Gamma = Annotated[
    int | None,
    typer.Option(
        "--gamma", help="Draft this many tokens every round (default: adapt to the acceptance rate)."
    ),
]
MaxBatch = Annotated[
    int, typer.Option("--max-batch", help="Requests of one member per batched forward pass (1: no batching).")
]
Device = Annotated[
    str, typer.Option("--device", help="auto (a CUDA GPU if there is one), cpu, cuda or cuda:N.")
]
MaxBody = Annotated[
    int,
    typer.Option(
        "--max-body-kb",
        help="The largest request body, in KiB; a larger one is refused (413) before it is read.",
    ),
]
Grace = Annotated[
    float,
    typer.Option(
        "--shutdown-grace",
        help="Seconds that requests in flight may finish after SIGINT or SIGTERM; then they are ended.",
    ),
]
LogLevel = Annotated[
    str, typer.Option("--log-level", help="uvicorn's log level: critical, error, warning, info, debug.")
]

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_MAX_LATENCY_MS = 86_400_000.0  # a day


def serve(
    teacher: Annotated[str, typer.Option(help="Teacher checkpoint (directory, .gguf or Hub id).")],
    student: Annotated[str, typer.Option(help="Distilled student checkpoint.")],
    order: OrderOpt = None,
    data: OrderData = None,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    max_latency_ms: MaxLatency = None,
    chat_template: ChatTemplate = None,
    layers: Layers = None,
    layer_map: LayerMapPreset = None,
    dtype: Dtype = "auto",
    threads: Threads = None,
    warm: Warm = False,
    speculative: Speculative = False,
    draft: Draft = "student",
    max_gamma: MaxGamma = 8,
    gamma: Gamma = None,
    max_batch: MaxBatch = 16,
    device: Device = "auto",
    max_body_kb: MaxBody = 1024,
    shutdown_grace: Grace = 5.0,
    log_level: LogLevel = "info",
    trust_remote_code: Trust = False,
) -> None:
    """Serve every member of a family (teacher, student, k0..kM, max-params:N, auto) over the OpenAI API."""
    from ..serve.server import bind

    # everything is checked before a model is loaded
    _check_options(dtype, device, max_batch, max_gamma, gamma, draft, max_latency_ms, threads, max_body_kb)
    _check_shutdown(shutdown_grace, log_level)
    template = _read_template(chat_template)
    _check_order_data(order, data)
    _check_server_packages()
    student_map = _family_layer_map(teacher, student, layers, layer_map, draft, order, trust_remote_code)
    options = dict(
        speculative=speculative,
        draft=draft,
        max_gamma=max_gamma,
        gamma=gamma,
        max_batch=max_batch,
        max_body_bytes=max_body_kb * 1024,
        grace_s=shutdown_grace,
    )
    sock = bind(host, port)

    where = (teacher, student, student_map, order, data, dtype, device)
    load = partial(_load, *where, max_latency_ms, template, trust_remote_code, options)
    _run(sock, host, load, threads, warm, log_level.lower())
    console.print("[green]stopped[/]")


def _check_options(
    dtype: str,
    device: str,
    max_batch: int,
    max_gamma: int,
    gamma: int | None,
    draft: str,
    max_latency_ms: float | None,
    threads: int | None,
    max_body_kb: int,
) -> None:
    """The precision, device, engine, latency, thread and body-size options."""
    from ..io.loading import parse_dtype
    from ..serve.options import check_device, check_draft, check_engine_options
    from ..serve.server import MAX_BODY_RANGE

    parse_dtype(dtype)
    check_device(device)
    check_engine_options(max_batch, max_gamma, gamma)
    check_draft(draft)
    if max_latency_ms is not None and not (
        math.isfinite(max_latency_ms) and 0 < max_latency_ms <= _MAX_LATENCY_MS
    ):
        raise BoomerangError(
            f"--max-latency-ms must be positive and finite, at most {_MAX_LATENCY_MS:.0f} (a day), "
            f"got {max_latency_ms:g}"
        )
    cores = os.cpu_count() or 1
    in_range("--threads", threads, 1, cores, f"this machine has {cores} cores")
    low, high = (b // 1024 for b in MAX_BODY_RANGE)
    in_range("--max-body-kb", max_body_kb, low, high, "a request body is 1 KiB to 1 GiB")


def _check_shutdown(shutdown_grace: float, log_level: str) -> None:
    from ..serve.server import MAX_GRACE_S

    real("--shutdown-grace", shutdown_grace, 0.0, MAX_GRACE_S)
    if log_level.lower() not in _LOG_LEVELS:
        raise BoomerangError(f"unknown --log-level {log_level!r}; use one of {', '.join(_LOG_LEVELS)}")


def _family_layer_map(
    teacher: str,
    student: str,
    layers: str | None,
    preset: str | None,
    draft: str,
    order: str | None,
    trust: bool,
) -> LayerMap:
    """The pair's layer map (configs only), with the draft and the order checked against it."""
    from ..analysis.resolve import check_order
    from ..serve.options import check_draft

    student_map = pair_layer_map(teacher, student, layers=layers, preset=preset, trust_remote_code=trust)
    check_draft(draft, student_map.n_student)
    check_order(order, student_map)  # unknown names and unreadable order files fail here
    return student_map


def _check_order_data(order: str | None, data: str | None) -> None:
    """A data-driven order needs --data, and the source must hold text (checked now, read when loading)."""
    from ..core.plan import is_data_order

    if not is_data_order(order):
        return
    if data is None:
        raise BoomerangError(f"order {order!r} is computed from calibration texts: pass --data PATH")
    if not data.startswith("hf:"):
        from ..data.corpora import read_texts

        next(read_texts(data, limit=1), None)  # a missing or empty source fails here, clearly


def _check_server_packages() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise BoomerangError(
            f"boomerang serve needs the server packages ({e.name} is missing): "
            "pip install 'boomerang-distill[serve]'"
        ) from None


def _run(
    sock: Any, host: str, load: Callable[[], FamilyServer], threads: int | None, warm: bool, log_level: str
) -> None:
    """Load, show, (warm,) and serve on ``sock`` until SIGINT or SIGTERM; always stops and closes."""
    server = None
    previous = _stop_on_sigterm()
    try:
        server = load()
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        _show(server, host, sock.getsockname()[1])
        if warm:
            server.start()
            with console.status("warming every member"):
                server.engine.warm(list(range(server.members.m + 1)))
        server.run(sock=sock, log_level=log_level)  # returns after SIGINT or SIGTERM, drained
    except KeyboardInterrupt:  # while loading or warming
        pass
    finally:
        if server is not None:
            server.stop()
        sock.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm() -> Any:
    """SIGTERM stops the command as Ctrl-C does, also while loading (the server, once it runs, drains on either);
    returns the handler to restore (None off the main thread, where signals cannot be handled)."""

    def interrupt(sig: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, interrupt)


def _read_template(path: Path | None) -> str | None:
    """The template's text, compiled once here: a syntax error stops the command before any loading."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BoomerangError(f"cannot read --chat-template {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise BoomerangError(
            f"--chat-template {path} is not a text file (not UTF-8): give a Jinja template such as the "
            "chat_template.jinja of a tokenizer"
        ) from None
    if not text.strip():
        raise BoomerangError(f"--chat-template {path} is empty: give a Jinja chat template")
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(text)
    except Exception as e:  # jinja2's TemplateSyntaxError (with its line), or anything else it refuses
        line = getattr(e, "lineno", None)
        where = f" (line {line})" if line else ""
        raise BoomerangError(
            f"--chat-template {path} is not a valid Jinja template{where}: {str(e)[:200]}; fix it and start again"
        ) from None
    return text


def _load(
    teacher: str,
    student: str,
    student_map: LayerMap,
    order: str,
    data: str | None,
    dtype: str,
    device: str,
    max_latency_ms: float | None,
    template: str | None,
    trust_remote_code: bool,
    options: dict[str, Any],
) -> FamilyServer:
    from ..family import Family
    from ..serve.options import choose, on_own_thread
    from ..serve.server import FamilyServer

    place = choose(dtype, device)
    with console.status("loading the teacher and the student"):
        family = Family(teacher, student, student_map, dtype=place.dtype, trust_remote_code=trust_remote_code)
        if place.device != "cpu":
            family.to(place.device)
    console.print(f"precision: {family.teacher.dtype} on {place.device} ({place.reason})")
    if family.tokenizer is None:
        raise BoomerangError(
            f"no tokenizer found for {teacher}: the teacher checkpoint needs its tokenizer files"
        )
    with console.status(f"resolving patch order {order or 'recorded by the student'}"):
        patch_order = on_own_thread(lambda: family.order(order, data=data))  # its passes off the main thread
    server = FamilyServer(
        family, order=patch_order, max_latency_ms=max_latency_ms, chat_template=template, **options
    )
    if server.router is not None:
        with console.status("measuring members for --max-latency-ms"):
            server.start()
    return server


def _show(server: FamilyServer, host: str, port: int) -> None:
    from rich.table import Table

    members = server.members
    t = Table(title=f"family ({members.order.name} order): {members.m + 1} members, one copy of the weights")
    for col in ("model", "aliases", "layers", "patched student layers", "parameters"):
        t.add_column(col, justify="right")
    for k in range(members.m + 1):
        row = members.rows[k]
        t.add_row(
            members.name(k),
            ", ".join(members.aliases(k)),
            str(row["layers"]),
            str(row["patched"]),
            fmt_count(members.params(k)),
        )
    console.print(t)
    extra = "; also max-params:N" + (", auto" if server.router is not None else "")
    console.print(
        f"[green]serving[/] on http://{host}:{port}/v1 (models: teacher, student, k0..k{members.m}{extra})"
    )


def register(app: typer.Typer) -> None:
    app.command()(serve)
