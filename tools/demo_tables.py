"""Print the README's demo tables from a demo's ``results.json``: family vs ShortGPT per distinct size out of
domain, the geometric means, and the students' validation perplexities.

    python tools/demo_tables.py docs/results/smollm2-135m/results.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

TEXTS = {"hamlet": "Hamlet", "devils-dictionary": "Devil's Dict."}


def main(path: Path) -> None:
    r = json.loads(path.read_text())
    curves = r["curves"]
    rows: dict[int, dict] = {}
    for text in TEXTS:
        sg = {p["layers"]: p for p in curves[text]["shortgpt"]}
        for p in curves[text]["main (size-aware)"]:
            n = p["layers"]
            rows.setdefault(n, {"params": p["inference"]})[text] = (p["ppl"], sg.get(n, {}).get("ppl"))
    head = " | ".join(f"{name}: boomerang | ShortGPT | / SG" for name in TEXTS.values())
    print(f"| layers | params | {head} |\n|---:|---:|" + "---:|---:|---:|" * len(TEXTS))
    teacher = max(rows)
    logs: dict[str, list[float]] = {t: [] for t in TEXTS}
    below = dict.fromkeys(TEXTS, 0)
    for n in sorted(rows):
        cells = []
        for text in TEXTS:
            b, s = rows[n][text]
            if n == teacher or s is None:
                cells.append(f"{b:.2f} | {b:.2f} | ")
                continue
            ratio = b / s
            logs[text].append(math.log(ratio))
            below[text] += ratio < 1
            bb, ss = (f"**{b:.1f}**", f"{s:.1f}") if ratio < 1 else (f"{b:.1f}", f"**{s:.1f}**")
            cells.append(f"{bb} | {ss} | {ratio:.2f}")
        label = f"{n} (student's size)" if n == min(rows) else f"{n} (teacher)" if n == teacher else str(n)
        print(f"| {label} | {rows[n]['params'] / 1e6:.1f}M | " + " | ".join(cells) + " |")
    for text, name in TEXTS.items():
        geo = math.exp(sum(logs[text]) / len(logs[text]))
        print(f"{name}: below ShortGPT at {below[text]}/{len(logs[text])}, geometric mean {geo:.3f}")
    for name, s in r["students"].items():
        vs, vt = s.get("val_student", {}).get("ppl"), s.get("val_teacher", {}).get("ppl")
        if vs and vt:
            print(f"student {name}: val {vs:.2f} / teacher {vt:.2f} = {vs / vt:.2f}x")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/smollm2-135m/results.json"))
