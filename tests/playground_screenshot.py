"""The playground screenshot of docs/serving.md and the README: `boomerang serve` on a real family in its own process,
the page driven in headless chromium (playwright), three members answering one chat message side by side.

    boomerang init --teacher smollm2-offline --out /tmp/smol-student
    nice -n 19 .venv/bin/python tests/playground_screenshot.py --student /tmp/smol-student --out docs/playground.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from playwright.sync_api import expect, sync_playwright
from serve_kit import CliServer
from test_playground import CHROMIUM_ARGS, chromium_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-offline")
    ap.add_argument("--student", required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/playground.png"))
    ap.add_argument("--members", default="0,10,16", help="the K of each member to show")
    ap.add_argument("--prompt", default="What is the capital of France? Answer in one sentence.")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    options = ("--threads", "2", "--warm")  # every member built and run once: steady-state tokens/s
    with (
        CliServer(args.teacher, args.student, *options, start_timeout=900) as server,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 860})
        page.set_default_timeout(900_000)
        page.goto(server.base + "/")
        page.wait_for_selector("#size:not([disabled])")
        while page.locator("#chosen li").count():
            page.locator("#chosen li button").first.click()
        for k in args.members.split(","):
            page.fill("#size", k)
            page.click("#add")
        page.fill("#size", "12")
        page.check('input[name="mode"][value="chat"]')
        page.fill("#prompt", args.prompt)
        page.fill("#max-tokens", str(args.max_tokens))
        page.fill("#temperature", "0")
        page.click("#send")
        page.wait_for_selector(".pane")
        expect(page.locator(".pane:not(.done)")).to_have_count(0, timeout=900_000)
        page.screenshot(path=str(args.out), full_page=True)
        for pane in page.locator(".pane").all():
            print(pane.get_attribute("data-model"), pane.locator(".stats").text_content())
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
