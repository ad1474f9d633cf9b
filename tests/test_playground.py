"""Issue 25, section 3: the playground page at ``/``, driven in a real headless browser (Debian's ``chromium`` through
``playwright``) against a tiny family served over real HTTP. Skipped when chromium or playwright is missing
(``.ci/run`` installs chromium; ``make setup`` installs playwright)."""

from __future__ import annotations

import os
import re
import shutil

import httpx
import pytest
from serve_kit import make_family

import boomerang as B
from boomerang.serve.app import STATIC
from boomerang.serve.server import FamilyServer

# the machine's network is closed: no GPU, no QUIC, nothing fetched in the background
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 120_000


def expect(locator):
    from playwright.sync_api import expect as _expect

    return _expect(locator)


def chromium_path() -> str | None:
    return (
        os.environ.get("BOOMERANG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


def missing(why: str) -> None:
    """Skip, unless the environment promises a browser (``.ci/run`` sets BOOMERANG_REQUIRE_BROWSER): then fail."""
    if os.environ.get("BOOMERANG_REQUIRE_BROWSER"):
        pytest.fail(f"BOOMERANG_REQUIRE_BROWSER is set, but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright import sync_api
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    path = chromium_path()
    if path is None:
        missing("chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("playground"), context=128)


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def open_playground(page, url: str, requests: list[str] | None = None):
    if requests is not None:
        page.on("request", lambda r: requests.append(r.url))
    page.goto(url.removesuffix("/v1") + "/")
    page.wait_for_selector("#size:not([disabled])")


def choose(page, ks: list[int]) -> None:
    """Empty the selection, then add each member with the size slider."""
    while page.locator("#chosen li").count():
        page.locator("#chosen li button").first.click()
    for k in ks:
        page.fill("#size", str(k))
        assert page.text_content("#size-info").startswith(f"k{k}")
        page.click("#add")
    assert [li.get_attribute("data-model") for li in page.locator("#chosen li").all()] == [
        f"k{k}" for k in ks
    ]


def send(page, mode: str, prompt: str, max_tokens: int = 8, temperature: float = 0) -> None:
    page.check(f'input[name="mode"][value="{mode}"]')
    page.fill("#prompt", prompt)
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", str(temperature))
    page.click("#send")
    page.wait_for_selector(".pane")
    # the page's policy forbids eval, so wait with a locator (not wait_for_function)
    expect(page.locator(".pane:not(.done)")).to_have_count(0, timeout=TIMEOUT_MS)


def api(url: str, mode: str, k: int, prompt: str) -> tuple[str, int]:
    """What the API answers member K, greedy, 8 tokens: (text, completion tokens)."""
    body = {"model": f"k{k}", "max_tokens": 8, "temperature": 0}
    if mode == "chat":
        r = httpx.post(
            url + "/chat/completions", json=body | {"messages": [{"role": "user", "content": prompt}]}
        )
        text = r.json()["choices"][0]["message"]["content"]
    else:
        r = httpx.post(url + "/completions", json=body | {"prompt": prompt})
        text = r.json()["choices"][0]["text"]
    return text, r.json()["usage"]["completion_tokens"]


def prompt_with_text(url: str, mode: str, ks: list[int]) -> tuple[str, list[tuple[str, int]]]:
    """A prompt on which every member in ``ks`` answers some text (a tiny random model may end at once)."""
    for i in range(5, 60):
        prompt = f"w{i} w{i + 1} w{i + 2}"
        answers = [api(url, mode, k, prompt) for k in ks]
        if all(text.strip() for text, _ in answers):
            return prompt, answers
    raise AssertionError("no prompt on which every member answers text")


def pane(page, k: int) -> dict[str, str]:
    p = page.locator(f'.pane[data-model="k{k}"]')
    return {part: p.locator(f".{part}").text_content() for part in ("text", "stats", "error")}


def test_the_page_streams_two_members_side_by_side_as_the_api_answers(browser, page, family_dirs):
    t_dir, s_dir = family_dirs
    server = FamilyServer(B.Family(t_dir, s_dir))
    requests: list[str] = []
    with server.background() as url:
        base = url.removesuffix("/v1")
        open_playground(page, url, requests)
        members = httpx.get(url + "/models").json()["data"]
        # the slider shows every member's layers and parameters; the student and the teacher are chosen at first
        assert page.get_attribute("#size", "max") == str(len(members) - 1)
        assert [li.get_attribute("data-model") for li in page.locator("#chosen li").all()] == ["k0", "k4"]
        page.fill("#size", "2")
        info = page.text_content("#size-info")
        assert f"{members[2]['layers']} layers" in info and "parameters" in info, info
        choose(page, [1, 3])
        for mode in ("completion", "chat"):
            prompt, answers = prompt_with_text(url, mode, [1, 3])
            send(page, mode, prompt)
            assert page.locator(".pane").count() == 2
            for k, (text, tokens) in zip((1, 3), answers, strict=True):
                got = pane(page, k)
                assert got["text"] == text, (mode, k, got, text)
                assert (
                    got["error"] == "" and f"{tokens} tokens" in got["stats"] and "tokens/s" in got["stats"]
                ), got
        # a request the server refuses shows its message in the pane
        send(page, "completion", "w5", max_tokens=500)
        for k in (1, 3):
            got = pane(page, k)
            assert "maximum context length is 128" in got["error"], got
    # everything the page loaded came from the server itself: no CDN, nothing from the network
    assert requests and all(u.startswith(base + "/") for u in requests), requests


def test_bad_input_on_the_page_shows_a_message_not_a_blank_pane(browser, page, family_dirs):
    t_dir, s_dir = family_dirs
    server = FamilyServer(B.Family(t_dir, s_dir))
    with server.background() as url:
        open_playground(page, url)
        # an empty prompt: a message, and no request
        page.fill("#prompt", "   ")
        page.click("#send")
        assert "Type a prompt" in page.text_content("#message")
        assert page.locator(".pane").count() == 0
        # no member chosen
        choose(page, [])
        page.fill("#prompt", "w5")
        page.click("#send")
        assert "Choose at least one member" in page.text_content("#message")
        choose(page, [0, 2])
    # the server is gone: each pane says so
    send(page, "completion", "w5 w6")
    assert page.text_content("#message") == ""
    for k in (0, 2):
        got = pane(page, k)
        assert "Cannot reach the server" in got["error"], got


def test_the_page_is_served_with_a_policy_that_forbids_other_origins(family_dirs):
    t_dir, s_dir = family_dirs
    server = FamilyServer(B.Family(t_dir, s_dir))
    with server.background() as url:
        base = url.removesuffix("/v1")
        r = httpx.get(base + "/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        for name in ("playground.js", "playground.css"):
            assert httpx.get(f"{base}/static/{name}").status_code == 200
        assert httpx.get(base + "/static/missing.js").status_code == 404
    # no address of any other site in the page's files (the policy would block it anyway)
    for f in STATIC.iterdir():
        assert not re.search(r"(https?:)?//[a-z0-9]", f.read_text()), f
