"""Model cards for a family: a ``README.md`` for the family and one for each member, in the Hugging Face Hub's
format (YAML metadata written and parsed by ``huggingface_hub``'s ``ModelCardData`` / ``ModelCard``).

A card says what the model is (the member's layers, the teacher blocks it holds, its parameters), how well it does
(the perplexity a sweep measured on it, when the family was given one), how to load it (``from_pretrained`` with a
``subfolder``, the GGUF file for llama.cpp, and how to rebuild it from the teacher and the student, with the
reference implementation's ``build_intermediate_model`` call when one builds it) and what to cite. Its metadata
names the teacher as ``base_model`` (a Hub id) and carries the teacher's licence, when those are known.

Cards are rendered from ``family.json`` alone (``family_card``, ``member_card``), so ``boomerang publish`` renders
them again with the repository's id in the loading examples. Sweep results are matched to members here
(``sweep_scores``): a sweep counts only if it evaluated this student with this layer map, and a member's score is
the row with the same patched student layers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core.layermap import LayerMap
from .core.plan import reference_plan
from .errors import BoomerangError
from .io.checkpoints import fmt_bytes
from .io.offline import OFFLINE_ALIAS, OFFLINE_HUB_ID, offline_dir, smollm2_gguf

TAGS = ("boomerang-distillation", "knowledge-distillation", "layer-patching", "model-family")
PAPER = "https://arxiv.org/abs/2510.05064"
CITATION = """@inproceedings{kangaslahti2026boomerang,
  title     = {Boomerang Distillation Enables Zero-Shot Model Size Interpolation},
  author    = {Kangaslahti, Sara and Nayak, Nihal V. and Geuter, Jonathan and Fumero, Marco and
               Locatello, Francesco and Alvarez-Melis, David},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2026},
  eprint    = {2510.05064},
  archivePrefix = {arXiv}
}"""
SWEEP_FILE = "results.json"
_SWEEP_DEPTH = 3  # how many directories above the student a run's ``sweeps/`` folder is looked for


@dataclass(frozen=True)
class CardInfo:
    """What a family's cards say beyond ``family.json``: the teacher's Hub id and licence (None: unknown)."""

    base_model: str | None = None
    license: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"base_model": self.base_model, "license": self.license}


# ---- the teacher's Hub id and licence ------------------------------------------------------------------------


def teacher_info(teacher: str | os.PathLike | None) -> CardInfo:
    """The teacher's Hub id and licence, from what is at hand offline: a Hub id as given (its cached README), the
    offline teacher's GGUF, a local checkpoint's README metadata, or a Hub cache path (``models--org--name``)."""
    if teacher is None:
        return CardInfo()

    spec = str(teacher)
    path = Path(spec).expanduser()
    if spec == OFFLINE_ALIAS or (path.is_dir() and _same(path, offline_dir())):
        return CardInfo(OFFLINE_HUB_ID, _offline_license())
    if path.suffix == ".gguf" and path.is_file():
        return CardInfo(None, _gguf_license(path))
    if path.is_dir():
        return CardInfo(_hub_cache_id(path), _readme_license(path / "README.md"))
    if path.exists():
        return CardInfo()
    return CardInfo(spec, _cached_hub_license(spec))  # a Hub id


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _readme_license(path: Path) -> str | None:
    if not path.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        license = ModelCard.load(path).data.license
    except Exception:  # a README without (valid) metadata
        return None
    return license if isinstance(license, str) else None


def _gguf_license(path: Path) -> str | None:
    from gguf import GGUFReader

    try:
        field = GGUFReader(path).fields.get("general.license")
        return str(field.contents()) if field is not None else None
    except Exception:
        return None


def _offline_license() -> str | None:
    try:
        return _gguf_license(smollm2_gguf())
    except BoomerangError:  # the package is not installed (the teacher was converted elsewhere)
        return None


def _hub_cache_id(path: Path) -> str | None:
    """``.../models--org--name/snapshots/<hash>`` (a Hub cache folder) -> ``org/name``."""
    for part in reversed(path.resolve().parts):
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/")
    return None


def _cached_hub_license(repo: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, "README.md")
    except Exception:  # not a valid repo id
        return None
    return _readme_license(Path(found)) if isinstance(found, str) else None


# ---- sweeps --------------------------------------------------------------------------------------------------


def sweep_files(paths: list[str | os.PathLike] | None, student: str | None) -> tuple[list[Path], bool]:
    """The sweep results to read and whether the user named them: the given files (a ``results.json`` or the sweep
    directory holding it), else those in the known place, a run's ``sweeps/`` folder (``boomerang demo``'s layout:
    ``RUN/sweeps/TEXT/TAG/results.json`` beside ``RUN/distill/student``) up to three directories above the
    student."""
    if paths:
        found = []
        for p in paths:
            p = Path(p).expanduser()
            f = p / SWEEP_FILE if p.is_dir() else p
            if not f.is_file():
                raise BoomerangError(
                    f"--sweep {p}: no {SWEEP_FILE} there; give a sweep's output directory (boomerang sweep --out) "
                    "or its results.json"
                )
            found.append(f)
        return found, True
    if not student or not Path(student).is_dir():
        return [], False
    here = Path(student).resolve()
    for parent in list(here.parents)[:_SWEEP_DEPTH]:
        if (parent / "sweeps").is_dir():
            return sorted((parent / "sweeps").rglob(SWEEP_FILE)), False
    return [], False


def _load_sweep(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ValueError("no 'rows' list")
        return data
    except (OSError, ValueError) as e:
        raise BoomerangError(f"cannot read the sweep results {path}: {e}") from None


def _same_model(recorded: Any, spec: str | None) -> bool:
    if not recorded or not spec:
        return False
    if str(recorded) == str(spec):
        return True
    a, b = Path(str(recorded)).expanduser(), Path(str(spec)).expanduser()
    return a.exists() and b.exists() and _same(a, b)


def sweep_scores(
    files: list[Path], manifest: Mapping[str, object], *, explicit: bool = False
) -> dict[int, list[dict[str, Any]]]:
    """``{K: [score, ...]}``: each sweep's measurement of each member (metric, value, text, tokens). A sweep of
    another student or layer map is refused when named (``explicit``), skipped when found."""
    scores: dict[int, list[dict[str, Any]]] = {}
    members = {tuple(r["patched_student_layers"]): r["K"] for r in manifest["members"]}
    for f in files:
        data = _load_sweep(f)
        why = None
        if data.get("layer_map") != manifest["layer_map"]:
            why = f"its layer map {data.get('layer_map')} is not the family's {manifest['layer_map']}"
        elif not _same_model(data.get("student"), manifest["student"]):
            why = f"it evaluated the student {data.get('student')}, not {manifest['student']}"
        if why is not None:
            if explicit:
                raise BoomerangError(f"the sweep {f} does not describe this family: {why}; drop --sweep {f}")
            continue
        metric = (data.get("metric") or {}).get("name", "perplexity")
        text = Path(str(data.get("data", "?"))).name
        for row in data["rows"]:
            if row.get("method") != "boomerang" or row.get(metric) is None:
                continue
            patched = row.get("patched")
            k = members.get(tuple(patched)) if patched is not None else None
            if k is None and row.get("role") == "teacher":
                k = members.get(tuple(range(manifest["n_student"])))
            if k is None:
                continue
            scores.setdefault(k, []).append(
                {
                    "metric": metric,
                    "value": row[metric],
                    "text": text,
                    "tokens": row.get("scored_tokens"),
                    "sweep": str(f),
                }
            )
    return scores


# ---- rendering -----------------------------------------------------------------------------------------------


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _metadata(manifest: dict[str, Any]) -> Any:
    from huggingface_hub import ModelCardData

    card = manifest.get("card") or {}
    tags = [*TAGS, *(["gguf"] if any(r.get("gguf") for r in manifest["members"]) else [])]
    return ModelCardData(
        base_model=card.get("base_model"),
        library_name="transformers",
        license=card.get("license"),
        pipeline_tag="text-generation",
        tags=tags,
    )


def _card(manifest: dict[str, Any], body: str) -> str:
    """The card text, built and parsed by ``huggingface_hub`` (a malformed card fails here, not on the Hub)."""
    from huggingface_hub import ModelCard

    text = f"---\n{_metadata(manifest).to_yaml()}\n---\n\n{body.strip()}\n"
    card = ModelCard(text)
    if card.data.library_name != "transformers":
        raise BoomerangError("internal error: the model card's metadata did not survive parsing")
    return str(card)


def _where(repo_id: str | None, member: str) -> tuple[str, str]:
    """``(first from_pretrained argument, extra arguments)`` for a member: on the Hub, or in the local folder."""
    if repo_id:
        return repo_id, f', subfolder="{member}"'
    return f"path/to/family/{member}", ""


def _scores_cell(row: dict[str, Any]) -> str:
    found = row.get("scores") or []
    return ", ".join(f"{s['value']:.2f} ({s['text']})" for s in found) or "–"


def _reference_call(manifest: dict[str, Any], row: dict[str, Any]) -> str | None:
    """The reference ``build_intermediate_model`` call that builds this member, if any."""
    layer_map = LayerMap(**manifest["layer_map"])
    want = (tuple(row["patched_student_layers"]), row["embedding_from"])
    for first in (False, True):
        for n in range(layer_map.n_student + 1):
            plan = reference_plan(layer_map, n, first)
            if (plan.patched, plan.embed_source) == want:
                return (
                    f'model, tokenizer = build_intermediate_model("{manifest["teacher"]}", "{manifest["student"]}", '
                    f"num_layers_to_patch={n}, patch_first_k_layers={first})"
                )
    return None


def _rebuild(manifest: dict[str, Any], row: dict[str, Any]) -> str:
    lines = [
        "Rebuild it from the teacher and the student with boomerang (`pip install boomerang-distill`; paths as "
        "recorded when the family was written):",
        "",
        "```python",
        "import boomerang as B",
        f'family = B.Family("{manifest["teacher"]}", "{manifest["student"]}")',
        f"model = family.member(patched={row['patched_student_layers']})",
        "```",
    ]
    call = _reference_call(manifest, row)
    if call:
        lines += [
            "",
            "or with the reference implementation's call (`boomerang.compat` reproduces it):",
            "",
            "```python",
            "from boomerang.compat import build_intermediate_model",
            call,
            "```",
        ]
    else:
        lines += [
            "",
            "No `build_intermediate_model(...)` call of the reference implementation builds this member.",
        ]
    return "\n".join(lines)


def _gguf_use(row: dict[str, Any], repo_id: str | None) -> str:
    g = row.get("gguf")
    if not g:
        return ""
    get = f"huggingface-cli download {repo_id} {g['file']} --local-dir .\n" if repo_id else ""
    return (
        f"\nFor llama.cpp (and what is built on it: Ollama, LM Studio) the member is one GGUF file, `{g['file']}` "
        f'({g["type"]}, {fmt_bytes(g["bytes"])}):\n\n```bash\n{get}llama-cli -m {g["file"]} -p "Hello"\n```\n'
    )


def _citation() -> str:
    return f"## Citation\n\nBoomerang distillation ([arXiv 2510.05064]({PAPER})):\n\n```bibtex\n{CITATION}\n```\n"


def member_card(manifest: Mapping[str, object], row: Mapping[str, object], repo_id: str | None = None) -> str:
    """The card (README.md) of one member."""
    where, extra = _where(repo_id, row["dir"])
    m, k = manifest["n_student"], row["K"]
    role = " (the student)" if k == 0 else " (the teacher)" if k == m else ""
    p = row["params"]
    facts = [
        "| | |",
        "|:--|:--|",
        f"| family size K | {k} of 0..{m}{role} |",
        f"| layers | {row['n_layers']} |",
        f"| patched student layers | {row['patched_student_layers'] or 'none'} |",
        f"| teacher layer of each layer | {row['teacher_layers']} |",
        f"| parameters | {_params(p['trainable'])} stored, {_params(p['inference'])} at inference |",
        f"| weights | {fmt_bytes(row['weights_bytes'])} ({manifest['dtype']}) |",
    ]
    for s in row.get("scores") or []:
        facts.append(f"| {s['metric']} on {s['text']} | {s['value']:.3f} ({s['tokens']} tokens) |")
    body = f"""
# {manifest.get("name", "boomerang family")}: {row["dir"]}

Member K = {k} of a [boomerang distillation]({PAPER}) family: the student `{manifest["student"]}` with {k} of its
{m} layers replaced by the teacher blocks they stand for (teacher `{manifest["teacher"]}`, {manifest["model_type"]},
patch order `{manifest["order"]["name"]}`). No training went into it beyond the student's distillation.

{chr(10).join(facts)}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{where}"{extra})
tokenizer = AutoTokenizer.from_pretrained("{where}"{extra})
```
{_gguf_use(row, repo_id)}
{_rebuild(manifest, row)}

{_citation()}"""
    return _card(manifest, body)


def family_card(manifest: Mapping[str, object], repo_id: str | None = None) -> str:
    """The card (README.md) of the whole family."""
    rows = manifest["members"]
    gguf = any(r.get("gguf") for r in rows)
    scored = any(r.get("scores") for r in rows)
    head = ["K", "subfolder", "layers", "patched student layers", "params (inference)"]
    head += ["measured"] if scored else []
    head += ["GGUF"] if gguf else []
    table = ["| " + " | ".join(head) + " |", "|" + "|".join(["--:"] + [":--"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [
            str(r["K"]),
            f"`{r['dir']}`",
            str(r["n_layers"]),
            str(r["patched_student_layers"]),
            _params(r["params"]["inference"]),
        ]
        cells += [_scores_cell(r)] if scored else []
        cells += [f"`{r['gguf']['file']}`" if r.get("gguf") else "–"] if gguf else []
        table.append("| " + " | ".join(cells) + " |")
    example = rows[len(rows) // 2]
    where, extra = _where(repo_id, example["dir"])
    metric = ""
    if scored:
        metric = "\nThe measured column is the perplexity (or the sweep's metric) on the named text, from `boomerang sweep`.\n"
    body = f"""
# {manifest.get("name", "boomerang family")}

{len(rows)} sizes of one model, made by [boomerang distillation]({PAPER}): a student distilled from the teacher
`{manifest["teacher"]}` ({manifest["model_type"]}, {manifest["n_teacher"]} layers) into {manifest["n_student"]} layers,
then every intermediate size by patching student layers back with the teacher blocks they stand for (patch order
`{manifest["order"]["name"]}`), without further training. K = 0 is the student and K = {manifest["n_student"]} the
teacher; each member is a standard checkpoint in its own subfolder with its own card.

{chr(10).join(table)}
{metric}
## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{where}"{extra})
tokenizer = AutoTokenizer.from_pretrained("{where}"{extra})
```
{_gguf_use(example, repo_id)}
Each member's card shows how to rebuild it from the teacher and the student (`boomerang.Family`, and the reference
implementation's `build_intermediate_model` call where one builds it). `family.json` lists every member's layer
sources and files; `order.json` is the patch order.

{_citation()}"""
    return _card(manifest, body)


def write_cards(directory: Path, manifest: Mapping[str, object], repo_id: str | None = None) -> list[Path]:
    """Write the family's README.md and each member's into ``directory`` (an export's temporary directory)."""
    written = [directory / "README.md"]
    written[0].write_text(family_card(manifest, repo_id), encoding="utf-8")
    for row in manifest["members"]:
        path = directory / row["dir"] / "README.md"
        path.write_text(member_card(manifest, row, repo_id), encoding="utf-8")
        written.append(path)
    return written
