"""Helpers for the tests that run `boomerang serve` for real: a tiny family on disk and the CLI server in its own
process (on 127.0.0.1, any free port), with its output collected."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from tiny import make_pair, save_pair, tiny_tokenizer

# renders the messages' contents, then opens the assistant's turn with w4 (a word of the tiny vocabulary)
CHAT = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w4{% endif %}"
LONG_CONTEXT = 65536  # long enough for a generation that outlasts any test, and prompts of 200K characters


def make_family(root: Path, context: int = LONG_CONTEXT) -> tuple[Path, Path]:
    """A tiny Llama teacher and its 4-layer student saved under ``root`` (with a chat template)."""
    if not (root / "student").exists():
        teacher, student, lm = make_pair("llama", tie=True, max_position_embeddings=context)
        t_dir, _ = save_pair(root, teacher, student, lm)
        tok = tiny_tokenizer()
        tok.chat_template = CHAT
        tok.save_pretrained(t_dir)
    return root / "teacher", root / "student"


class CliServer:
    """``boomerang serve`` in a child process: ``with CliServer(t_dir, s_dir, *options) as s: s.url``."""

    def __init__(self, teacher: Path, student: Path, *options: str, start_timeout: float = 240.0) -> None:
        self.cmd = [sys.executable, "-c", "from boomerang.cli.app import main; main()", "serve"]
        self.cmd += ["--teacher", str(teacher), "--student", str(student), "--port", "0", "--threads", "1"]
        self.cmd += ["--log-level", "warning", *options]
        self.start_timeout = start_timeout
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> CliServer:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while not self.url:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError("the server did not start:\n" + self.output())
            m = re.search(r"serving on (http://127\.0\.0\.1:\d+/v1)", self.output())
            self.url = m.group(1) if m else ""
            time.sleep(0.1)
        while True:
            try:
                if httpx.get(self.base + "/health", timeout=10).json()["status"] == "ok":
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and self.proc.poll() is None, self.output()
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def base(self) -> str:
        return self.url.removesuffix("/v1")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        time.sleep(0.2)  # the reader thread takes the last lines
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
