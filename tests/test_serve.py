"""``boomerang serve``: a tiny family behind the OpenAI-compatible API, exercised with the official ``openai``
client (and ``httpx`` for raw bodies) over real HTTP on 127.0.0.1."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from tiny import make_pair, save_pair, tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

import boomerang as B
from boomerang.cli.app import run
from boomerang.serve.engine import Job
from boomerang.serve.protocol import APIError, parse
from boomerang.serve.sampling import Sampling
from boomerang.serve.server import FamilyServer
from boomerang.serve.service import Service
from boomerang.serve.text import TextStream, Tokens

CHAT = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w4{% endif %}"
PROMPTS = ["w5 w6 w7", "w10 w11", "w20 w30 w40 w50", "w9"]
GREEDY = dict(temperature=0, max_tokens=8)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    teacher, student, lm = make_pair("llama", tie=True)
    t_dir, s_dir = save_pair(tmp, teacher, student, lm)
    tok = tiny_tokenizer()
    tok.chat_template = CHAT
    tok.save_pretrained(t_dir)
    return tmp, t_dir, s_dir


@pytest.fixture(scope="module")
def served(pair):
    _tmp, t_dir, s_dir = pair
    server = FamilyServer(B.Family(t_dir, s_dir))
    with server.background() as url:
        yield server, url, openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def built_member(pair, k):
    """Member K written by `boomerang build`, loaded as a plain checkpoint, and its tokenizer."""
    tmp, t_dir, s_dir = pair
    out = tmp / f"built-k{k}"
    if not out.exists():
        assert (
            run(["build", "--teacher", str(t_dir), "--student", str(s_dir), "-k", str(k), "--out", str(out)])
            == 0
        )
    return AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)


def reference(model, tok, ids, max_new_tokens=8):
    """(text, finish_reason, completion tokens) of greedy `generate` on the prompt ids."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0
        )
    new = out[0, len(ids) :].tolist()
    finish = "stop" if new and new[-1] == tok.eos_token_id else "length"
    return tok.decode(new, skip_special_tokens=True), finish, len(new)


def storage(model):
    return {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}


# ---- the API through the official client ----------------------------------------------------------------------


def test_models_lists_every_member_with_layers_and_parameters(served):
    server, _url, client = served
    family = server.family
    table = family.table()
    data = client.models.list().data
    assert [m.id for m in data] == [f"k{k}" for k in family.ks]
    for m, row in zip(data, table, strict=True):
        extra = m.model_extra
        assert m.object == "model" and extra["k"] == row["K"]
        assert extra["layers"] == row["layers"] and extra["patched_student_layers"] == row["patched"]
        assert extra["parameters"] == row["trainable"] and extra["inference_parameters"] == row["inference"]
    assert data[0].model_extra["aliases"] == ["student"] and data[-1].model_extra["aliases"] == ["teacher"]
    assert data[0].model_extra["parameters"] == B.count_params(family.student).trainable
    assert data[-1].model_extra["parameters"] == B.count_params(family.teacher).trainable
    assert client.models.retrieve("teacher").id == f"k{family.n_student}"
    assert client.models.retrieve("student").id == "k0"


@pytest.mark.parametrize("name, k", [("student", 0), ("k2", 2), ("teacher", 4)])
def test_greedy_completions_equal_generate_on_the_built_member(served, pair, name, k):
    _server, _url, client = served
    model, tok = built_member(pair, k)
    for prompt in PROMPTS[:2]:
        text, finish, n = reference(model, tok, tok(prompt)["input_ids"])
        r = client.completions.create(model=name, prompt=prompt, **GREEDY)
        assert r.model == f"k{k}" and r.object == "text_completion"
        assert r.choices[0].text == text and r.choices[0].finish_reason == finish
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(tok(prompt)["input_ids"]), n)
        assert r.usage.total_tokens == r.usage.prompt_tokens + n
        chunks = list(
            client.completions.create(
                model=name, prompt=prompt, stream=True, stream_options={"include_usage": True}, **GREEDY
            )
        )
        assert "".join(c.choices[0].text for c in chunks if c.choices) == text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n
        assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].model == f"k{k}"


def test_chat_uses_the_chat_template_and_equals_generate(served, pair):
    _server, _url, client = served
    model, tok = built_member(pair, 1)
    messages = [{"role": "system", "content": "w7 w8"}, {"role": "user", "content": "w5 w9 w11"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    assert ids == tok("w7 w8 w5 w9 w11 w4")["input_ids"]  # the template the test set
    text, finish, n = reference(model, tok, ids)
    r = client.chat.completions.create(model="k1", messages=messages, **GREEDY)
    assert r.object == "chat.completion" and r.model == "k1"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == text
    assert r.choices[0].finish_reason == finish and r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == n
    chunks = list(client.chat.completions.create(model="k1", messages=messages, stream=True, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == finish and chunks[-1].object == "chat.completion.chunk"


def test_raw_stream_is_server_sent_events_ending_with_done(served):
    _server, url, _client = served
    body = {"model": "k3", "prompt": "w5 w6", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-boomerang-member"] == "k3"
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_parameter_budgets_pick_the_largest_member_that_fits(served):
    server, _url, client = served
    params = [server.members.params(k) for k in server.family.ks]
    # last order on blocks of 2, 2, 1, 1 teacher layers: k1 and k2 (teacher head, untied) have the same size
    assert params[0] < params[1] == params[2] < params[3] < params[4]
    cases = ((params[0], "k0"), (params[1], "k2"), (params[3] - 1, "k2"), (params[4] - 1, "k3"), ("1M", "k4"))
    for budget, expected in cases:
        r = client.completions.create(model=f"max-params:{budget}", prompt="w5", max_tokens=1, temperature=0)
        assert r.model == expected, budget


def test_sampling_seed_top_p_and_stop_strings(served):
    _server, _url, client = served
    kw = dict(model="k2", prompt="w5 w6 w7", max_tokens=8)
    a = client.completions.create(temperature=1.5, seed=7, **kw).choices[0].text
    b = client.completions.create(temperature=1.5, seed=7, **kw).choices[0].text
    assert a == b  # a seed makes sampling repeatable
    greedy = client.completions.create(temperature=0, **kw).choices[0]
    # a nucleus this small keeps only the most likely token: greedy again
    assert client.completions.create(temperature=1.0, top_p=1e-9, seed=3, **kw).choices[0].text == greedy.text
    words = greedy.text.split(" ")
    assert len(words) == 8
    stop = " " + words[3]
    cut = greedy.text[: greedy.text.index(stop)]
    r = client.completions.create(temperature=0, stop=[stop, "never"], **kw)
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(temperature=0, stop=stop, stream=True, **kw)
    assert "".join(c.choices[0].text for c in streamed) == cut


@pytest.mark.parametrize(
    "call, error, words",
    [
        (dict(model="k9", prompt="w5"), openai.NotFoundError, ["`k9` does not exist", "k0..k4"]),
        (dict(model="gpt-4", prompt="w5"), openai.NotFoundError, ["`gpt-4` does not exist", "/v1/models"]),
        (
            dict(model="k1", prompt="w5", max_tokens=500),
            openai.BadRequestError,
            ["maximum context length is 128"],
        ),
        (dict(model="k1", prompt="w5 " * 130), openai.BadRequestError, ["the prompt alone has 130 tokens"]),
        (dict(model="k1", prompt="w5", temperature=3), openai.BadRequestError, ["temperature"]),
        (dict(model="k1", prompt="w5", top_p=0), openai.BadRequestError, ["top_p"]),
        (dict(model="k1", prompt="w5", max_tokens=0), openai.BadRequestError, ["max_tokens"]),
        (dict(model="k1", prompt="w5", n=2), openai.BadRequestError, ["n: not supported"]),
        (
            dict(model="k1", prompt="w5", stop=["a", "b", "c", "d", "e"]),
            openai.BadRequestError,
            ["at most 4"],
        ),
        (dict(model="k1", prompt=[5, 999]), openai.BadRequestError, ["outside the vocabulary"]),
        (dict(model="k1", prompt=["w5", "w6"]), openai.BadRequestError, ["one prompt per request"]),
        (dict(model="max-params:10", prompt="w5"), openai.BadRequestError, ["no member has at most 10"]),
        (
            dict(model="max-params:lots", prompt="w5"),
            openai.BadRequestError,
            ["cannot read the parameter budget"],
        ),
        (dict(model="auto", prompt="w5"), openai.NotFoundError, ["--max-latency-ms"]),
    ],
)
def test_bad_requests_get_4xx_naming_the_problem(served, call, error, words):
    _server, _url, client = served
    with pytest.raises(error) as info:
        client.completions.create(**call)
    assert 400 <= info.value.status_code < 500
    message = info.value.body["message"]
    for w in words:
        assert w in message, message


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/completions", b'{"model": "k1", "prompt": ', 400, ["malformed JSON"]),
        ("/completions", b"[1, 2]", 400, ["must be a JSON object"]),
        ("/completions", b'{"model": "k1"}', 400, ["prompt: missing"]),
        (
            "/completions",
            b'{"model": "k1", "prompt": "w5", "temprature": 1}',
            400,
            ["temprature: unrecognized"],
        ),
        ("/chat/completions", b'{"model": "k1", "messages": []}', 400, ["messages"]),
        (
            "/chat/completions",
            b'{"model": "k1", "messages": [{"role": "robot", "content": "x"}]}',
            400,
            ["role"],
        ),
        (
            "/chat/completions",
            b'{"model": "k1", "messages": [{"role": "user", "content": "w5"}], "tools": [{}]}',
            400,
            ["tools: not supported"],
        ),
        ("/embeddings", b"{}", 404, ["no route /v1/embeddings"]),
    ],
)
def test_bad_bodies_over_raw_http(served, path, body, status, words):
    _server, url, _client = served
    r = httpx.post(url + path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    message = r.json()["error"]["message"]
    for w in words:
        assert w in message, message


def test_concurrent_requests_to_different_members_have_no_cross_talk(served):
    server, url, client = served
    work = [(f"k{k}", PROMPTS[i % len(PROMPTS)], i % 2 == 1) for i, k in enumerate([0, 1, 3, 4] * 4)]

    def ask(item):
        name, prompt, stream = item
        kw = dict(model=name, prompt=prompt, temperature=0, max_tokens=6)
        if stream:
            return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw))
        return client.completions.create(**kw).choices[0].text

    expected = {(n, p): ask((n, p, False)) for n, p, _ in work}  # one request at a time
    server.engine.peak_active = 0
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, work))
    assert got == [expected[(n, p)] for n, p, _ in work]
    assert server.engine.peak_active >= 2  # requests really took turns in the engine
    health = httpx.get(url.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["in_flight"] == 0
    # every member built so far holds only the teacher's and the student's tensors
    family = server.family
    sources = storage(family.teacher) | storage(family.student)
    for k in (0, 1, 3, 4):
        assert server.members.built(k)
        assert storage(server.members.model(k)) <= sources


# ---- the parts, without HTTP -----------------------------------------------------------------------------------


def test_members_are_built_lazily_once_and_share_tensors():
    teacher, student, lm = make_pair("qwen3", tie=True)
    service = Service(B.Family(teacher, student, lm, tokenizer=tiny_tokenizer()))
    assert not any(service.members.built(k) for k in range(5))
    service.start()
    try:
        service.engine.warm([1, 3])
        assert [service.members.built(k) for k in range(5)] == [False, True, False, True, False]
        assert service.members.model(3) is service.members.model(3)
        assert storage(service.members.model(3)) <= storage(teacher) | storage(student)
    finally:
        service.stop()


@pytest.mark.parametrize("arch", ["gemma3_text", "gpt2", "mistral"])
def test_engine_interleaved_greedy_equals_generate(arch):
    """Two members generating in turns, each with its own KV cache, on sliding-window and absolute-position
    architectures."""
    teacher, student, lm = make_pair(arch, tie=True)
    service = Service(B.Family(teacher, student, lm, tokenizer=tiny_tokenizer()))
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    sampling = Sampling(max_tokens=10, temperature=0.0, ignore_eos=True)
    service.start()
    try:
        results = []
        work = [(k, p) for k in (1, 3) for p in prompts]
        events = {}
        for i, (k, p) in enumerate(work):
            service.engine.submit(Job(k, p, sampling, lambda ev, i=i: events.setdefault(i, []).append(ev)))
        deadline = time.monotonic() + 60
        while sum(1 for evs in events.values() if evs[-1][0] != "text") < len(work):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        results = ["".join(e[1] for e in events[i] if e[0] == "text") for i in range(len(work))]
    finally:
        service.stop()
    tok = tiny_tokenizer()
    for (k, p), text in zip(work, results, strict=True):
        ref = B.patch(teacher, student, lm, num_patched=k, copy=True)
        with torch.no_grad():
            out = ref.generate(
                torch.tensor([p]), max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None
            )
        assert text == tok.decode(out[0, len(p) :], skip_special_tokens=True), (arch, k, p)


def test_a_failing_request_does_not_stop_the_engine():
    teacher, student, lm = make_pair("llama", tie=True)
    service = Service(B.Family(teacher, student, lm, tokenizer=tiny_tokenizer()))
    service.start()
    try:
        greedy = Sampling(max_tokens=3, temperature=0.0, ignore_eos=True)
        # token 500 is outside the 96-token embedding: that job fails in the model, the other one is served
        bad, good = service.engine.run_all([(1, [5, 500], greedy), (1, [5, 6], greedy)])
        assert bad[0] == "error" and "generation failed" in bad[1]
        assert good[0] == "done" and good[2]["completion_tokens"] == 3
        assert service.engine.running and service.engine.load() == []
    finally:
        service.stop()


def test_text_stream_holds_back_what_may_start_a_stop_string():
    tokens = Tokens(tiny_tokenizer())
    stream = TextStream(tokens, stop=[" w7 w8"])
    assert stream.add(5) == ("w5", False)
    assert stream.add(6) == (" w6", False)
    assert stream.add(7) == ("", False)  # " w7" may begin " w7 w8"
    assert stream.add(9) == (" w7 w9", False)  # it did not
    assert stream.add(7) == ("", False)
    assert stream.add(8) == ("", True)  # the stop string: nothing of it is released
    assert stream.text == "w5 w6 w7 w9"


def test_router_picks_the_largest_member_that_fits_under_load():
    teacher, student, lm = make_pair("llama", tie=True)
    service = Service(B.Family(teacher, student, lm, tokenizer=tiny_tokenizer()), max_latency_ms=45)
    router = service.router
    load: list[int] = []
    router.load = lambda: list(load)
    # measured costs: ms per step, a tenth per prompt token
    for k, ms in enumerate([1.0, 1.0, 1.0, 4.0, 4.0]):
        router.observe(k, "decode", 1, ms / 1000)
        router.observe(k, "prefill", 10, ms / 1000)
    router.observe(4, "speculative", 5, 1.0)  # speculative rounds are not decoding steps: ignored
    # alone, 10 prompt tokens and 10 new ones on the teacher: 10 * 0.4 + 9 * 4 = 40 ms
    d = router.choose(10, 10)
    assert (d.k, round(d.estimate_ms, 6)) == (4, 40.0)
    # three teacher requests in flight: a new one joins their batched step, so the teacher still fits
    load[:] = [4, 4, 4]
    assert router.choose(10, 10).k == 4
    # one student request in flight: each token also waits for its step (1 ms); k4 and k3: 4 + 1 + 9 * 5 = 50
    load[:] = [0]
    assert abs(router.estimate(2, 10, 10, load) - (0.001 + 0.001 + 9 * 0.002)) < 1e-12
    d = router.choose(10, 10)
    assert (d.k, d.fits, d.load) == (2, True, 1)  # k0..k2 have the same size: the most teacher layers wins
    load[:] = [0, 3, 4]  # nothing fits: the smallest member, reported late
    d = router.choose(10, 10)
    assert d.k == 0 and not d.fits
    # an unmeasured member is estimated from a line in parameter count through the measured ones
    router.reset()
    router.observe(0, "decode", 1, 0.001)
    router.observe(4, "decode", 1, 0.003)
    p0, p3, p4 = (service.members.params(k) for k in (0, 3, 4))
    assert abs(router.decode_cost(3) - (0.001 + 0.002 * (p3 - p0) / (p4 - p0))) < 1e-9
    assert router.snapshot()["chosen"] == {"k4": 2, "k2": 1, "k0": 1}


def test_auto_over_http_names_the_member_it_chose(pair):
    _tmp, t_dir, s_dir = pair
    server = FamilyServer(B.Family(t_dir, s_dir), max_latency_ms=60_000)
    with server.background() as url:
        assert server.router.measured  # calibrated at start
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        assert client.models.list().data[-1].id == "auto"
        r = client.completions.with_raw_response.create(model="auto", prompt="w5", max_tokens=2)
        # a generous budget: teacher
        assert r.headers["x-boomerang-member"] == "k4" and r.parse().model == "k4"
        health = httpx.get(url.removesuffix("/v1") + "/health").json()
        assert health["routing"]["chosen"] == {"k4": 1} and set(health["routing"]["decode_ms_per_token"]) == {
            "k0",
            "k2",
            "k4",
        }


def test_chat_without_a_template_is_a_400_that_says_so():
    teacher, student, lm = make_pair("llama", tie=True)
    service = Service(B.Family(teacher, student, lm, tokenizer=tiny_tokenizer()))
    request = parse("chat", b'{"model": "k1", "messages": [{"role": "user", "content": "w5"}]}')
    with pytest.raises(APIError) as info:
        service.prepare("chat", request)
    assert info.value.status == 400 and "no chat template" in info.value.message
    assert "--chat-template" in info.value.message


# ---- the command line -----------------------------------------------------------------------------------------


@pytest.fixture
def no_loading(monkeypatch):
    """Fail loudly if a model is loaded: bad input must be rejected before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr("boomerang.family.Family.__init__", refuse)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--order", "middle"], ["unknown patch order"]),
        (["--order", "greedy-kl"], ["--data"]),
        (["--order", "greedy-kl", "--data", "/nonexistent/texts"], ["does not exist"]),
        (["--order", "missing-order.json"], ["cannot read patch order"]),
        (["--max-latency-ms", "0"], ["--max-latency-ms must be positive"]),
        (["--port", "70000"], ["--port must be between"]),
        (["--dtype", "fp8"], ["unknown dtype"]),
        (["--chat-template", "/nonexistent.jinja"], ["cannot read --chat-template"]),
        (["--threads", "0"], ["--threads"]),
        (["--log-level", "loud"], ["--log-level"]),
    ],
)
def test_cli_rejects_bad_input_before_loading(pair, capsys, no_loading, extra, words):
    _tmp, t_dir, s_dir = pair
    code = run(["serve", "--teacher", str(t_dir), "--student", str(s_dir), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for w in words:
        assert w in err, err


def test_cli_rejects_missing_checkpoints_and_a_busy_port(pair, capsys, no_loading):
    _tmp, t_dir, s_dir = pair
    assert run(["serve", "--teacher", "/nonexistent/teacher", "--student", str(s_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert run(["serve", "--teacher", str(t_dir), "--student", str(s_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_until_interrupted(pair):
    """`boomerang serve` in its own process: answers a request, then stops cleanly on Ctrl-C."""
    _tmp, t_dir, s_dir = pair
    port = _free_port()
    cmd = [
        sys.executable,
        "-c",
        "from boomerang.cli.app import main; main()",
        "serve",
        "--teacher",
        str(t_dir),
    ]
    cmd += ["--student", str(s_dir), "--port", str(port), "--log-level", "warning", "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok":
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(
            model="k2", messages=[{"role": "user", "content": "w5"}], max_tokens=3
        )
        assert r.model == "k2" and r.usage.completion_tokens <= 3
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "serving" in out and f"http://127.0.0.1:{port}/v1" in out and "k0..k4" in out
    assert out.rstrip().endswith("stopped")


@pytest.mark.real
def test_real_smollm2_chat_equals_generate(real_teacher_dir):
    """SmolLM2's byte-level BPE tokenizer, chat template and end-of-turn token through the server."""
    teacher = B.load_model(real_teacher_dir)
    tok = B.load_tokenizer(real_teacher_dir)
    server = FamilyServer(B.Family(teacher, B.init_student(teacher), tokenizer=tok))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    with torch.no_grad():
        new = teacher.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[
            0, len(ids) :
        ].tolist()
    assert new[-1] == tok.eos_token_id  # the teacher ends its turn (<|im_end|>) within 12 tokens
    expected = tok.decode(new, skip_special_tokens=True)
    with server.background() as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        kw = dict(model="teacher", messages=messages, max_tokens=12, temperature=0)
        r = client.chat.completions.create(**kw)
        assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens == len(new) and r.usage.prompt_tokens == len(ids)
        chunks = client.chat.completions.create(stream=True, **kw)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected


# ---- start-up: --dtype auto ------------------------------------------------------------------------------------


def test_dtype_auto_measures_off_the_main_thread(monkeypatch):
    """`--dtype auto` times a bf16 and an fp32 product; done on the main thread, before the engine's thread
    existed, it left the server decoding at 0.74x the speed (benchmarks/serve_probe.py). The real measurement runs,
    on a thread of its own, and its choice is the server's."""
    import threading

    from boomerang.serve import options
    from boomerang.train import precision

    where, real = [], precision.choose_precision

    def recording(*args, **kwargs):
        where.append(threading.current_thread() is threading.main_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(precision, "choose_precision", recording)
    place = options.choose("auto", "cpu")
    assert where == [False]
    assert place.device == "cpu" and place.dtype in ("bfloat16", "float32") and place.reason
    assert options.choose("float32", "cpu").reason == "set by --dtype" and where == [False]  # no measurement


def test_work_on_its_own_thread_raises_its_errors_on_the_callers():
    from boomerang.errors import BoomerangError
    from boomerang.serve.options import on_own_thread

    def broken():
        raise BoomerangError("the message the user must see")

    with pytest.raises(BoomerangError, match="the message the user must see"):
        on_own_thread(broken)
    assert on_own_thread(lambda: 42) == 42
