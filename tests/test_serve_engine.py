"""The serving engine: continuous batching and speculative decoding inside the family, through a live server on
127.0.0.1 and the official ``openai`` client (tiny models), and the parts they rest on."""

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from tiny import make_pair, save_pair, tiny_tokenizer

import boomerang as B
from boomerang.serve import kv, runner
from boomerang.serve.engine import Job
from boomerang.serve.runner import shared_layers
from boomerang.serve.sampling import Sampling, probabilities
from boomerang.serve.server import FamilyServer
from boomerang.serve.service import Service
from boomerang.serve.speculative import (
    SpecState,
    SpecStats,
    accept_greedy,
    accept_sampled,
    best_gamma,
    expected_tokens,
)

PROMPTS = [
    "w5 w6 w7",
    "w10 w11",
    "w20 w30 w40 w50 w60 w61 w62",
    "w9",
    "w12 w13 w14 w15",
    "w70 w71 w72 w73 w74",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-engine")
    teacher, student, lm = make_pair("llama", tie=True)
    t_dir, s_dir = save_pair(tmp, teacher, student, lm)
    tiny_tokenizer().save_pretrained(t_dir)
    return t_dir, s_dir


@contextlib.contextmanager
def serving(pair, **options):
    t_dir, s_dir = pair
    server = FamilyServer(B.Family(t_dir, s_dir), **options)
    with server.background() as url:
        yield server, url, openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def served(pair):
    with serving(pair) as s:
        yield s


def complete(client, model, prompt, tokens=16, stream=False, **kw):
    """The text of one completion (greedy unless ``temperature`` is given), streamed or not."""
    kw = {"temperature": 0, **kw}
    extra = {"ignore_eos": True, **kw.pop("extra_body", {})}
    args = dict(model=model, prompt=prompt, max_tokens=tokens, extra_body=extra, **kw)
    if stream:
        return "".join(c.choices[0].text for c in client.completions.create(stream=True, **args))
    return client.completions.create(**args).choices[0].text


def concurrently(fn, items):
    start = threading.Barrier(len(items))

    def call(item):
        start.wait()
        return fn(item)

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(call, items))


# ---- batching ----------------------------------------------------------------------------------------------------


def test_batched_greedy_equals_the_same_request_alone(served):
    """Prompts of different lengths to one member, concurrently: one batch, the same text as each alone."""
    server, _url, client = served
    alone = [complete(client, "k3", p, 24) for p in PROMPTS]
    assert len(set(alone)) == len(PROMPTS)  # different prompts, different texts: a mix-up would show
    server.engine.peak_batch = 0
    got = concurrently(
        lambda ip: complete(client, "k3", ip[1], 24, stream=ip[0] % 2 == 1), list(enumerate(PROMPTS))
    )
    assert got == alone
    assert server.engine.peak_batch >= 2  # the requests really shared forward passes
    stats = client.models.retrieve("k3").model_extra["stats"]
    assert stats["max_batch"] >= 2 and stats["mean_batch"] > 1
    assert stats["completion_tokens"] == 2 * 24 * len(PROMPTS)


def run_jobs(service, work, speculative=False):
    """Submit ``(K, prompt, sampling)`` jobs at once; each job's text and last event."""
    events: dict[int, list] = {i: [] for i in range(len(work))}
    jobs = [
        service.engine.submit(Job(k, p, s, events[i].append, speculative=speculative))
        for i, (k, p, s) in enumerate(work)
    ]
    deadline = time.monotonic() + 60
    while not all(j.done for j in jobs):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert all(evs[-1][0] == "done" for evs in events.values()), events
    return [("".join(e[1] for e in evs if e[0] == "text"), evs[-1]) for evs in events.values()]


def test_a_job_is_done_only_after_its_final_event():
    """Watchers poll ``job.done`` (these tests, `benchmarks/serve.py`): by then its last event must be delivered.
    A sink that sleeps on the final event makes the gap wide enough to see."""
    teacher, student, lm = make_pair("llama", tie=True)
    service = Service(B.Family(teacher, student, lm, tokenizer=tiny_tokenizer()))
    seen: list[tuple[str, bool]] = []
    jobs: list[Job] = []

    def sink(event):
        if event[0] != "text":
            time.sleep(0.2)
        seen.append((event[0], jobs[0].done))

    service.start()
    try:
        jobs.append(Job(2, [5, 6, 7], Sampling(max_tokens=3, temperature=0.0, ignore_eos=True), sink))
        service.engine.submit(jobs[0])
        deadline = time.monotonic() + 60
        while not jobs[0].done:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert seen and seen[-1] == ("done", False)  # delivered before `done` was set
    finally:
        service.stop()


@pytest.mark.parametrize("arch", ["gemma3_text", "gpt2", "qwen3"])
def test_engine_batches_join_and_leave_between_steps(arch):
    """Jobs with different prompt lengths, limits and sampling on one member (sliding windows, absolute
    positions, q/k norms): batched, each equals transformers' generate (greedy) or its own run alone (sampled)."""
    teacher, student, lm = make_pair(arch, tie=True)
    service = Service(B.Family(teacher, student, lm, tokenizer=tiny_tokenizer()))
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20], [30, 31, 32, 33, 34]]
    limits = [12, 4, 9, 7]  # jobs leave the batch at different steps
    work = [
        (2, p, Sampling(max_tokens=n, temperature=0.0, ignore_eos=True))
        for p, n in zip(prompts, limits, strict=True)
    ]
    seeded = (2, prompts[0], Sampling(max_tokens=10, temperature=1.2, top_p=0.9, seed=11, ignore_eos=True))
    service.start()
    try:
        batched = run_jobs(service, [*work, seeded])
        assert service.engine.peak_batch >= 3
        alone = run_jobs(service, [seeded])
    finally:
        service.stop()
    tok = tiny_tokenizer()
    ref = B.patch(teacher, student, lm, num_patched=2, copy=True)
    for (text, last), p, n in zip(batched, prompts, limits, strict=False):
        with torch.no_grad():
            out = ref.generate(
                torch.tensor([p]), max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None
            )
        assert text == tok.decode(out[0, len(p) :], skip_special_tokens=True), (arch, p)
        assert last == (
            "done",
            "length",
            {"prompt_tokens": len(p), "completion_tokens": n, "total_tokens": len(p) + n},
        )
    assert batched[-1] == alone[0]  # seeded sampling: batched == alone


def test_row_attention_of_a_row_does_not_depend_on_the_other_rows():
    """The attention of one sequence, alone or beside longer and shorter ones: bit for bit the same (no padding,
    no mask), for decoding, verifying (several new tokens) and sliding-window layers."""
    torch.manual_seed(0)

    class Layer(torch.nn.Module):
        layer_idx = 0

    lengths = [9, 3, 17]
    rows = []
    for n in lengths:
        cache = kv.SeqCache(1)
        cache.slots[0].write(0, torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8), 0)
        cache.length = n
        rows.append(cache)
    for q in (1, 3):
        for window in (None, 4):
            keys = torch.randn(3, 2, q, 8)
            values = torch.randn(3, 2, q, 8)
            query = torch.randn(3, 4, q, 8)
            outs = []
            for batch in ([0, 1, 2], [0], [1], [2]):
                for r in rows:
                    r.length = lengths[rows.index(r)]
                step = kv.Step([rows[i] for i in batch], q)
                step.update(keys[batch], values[batch], 0)
                out, _ = kv.row_attention(
                    Layer(),
                    query[batch],
                    keys[batch],
                    values[batch],
                    None,
                    scaling=0.35,
                    sliding_window=window,
                    boomerang_step=step,
                )
                outs.append(out)
            together, alone = outs[0], torch.cat(outs[1:])
            assert torch.equal(together, alone), (q, window)


# ---- speculative decoding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("draft, gamma", [("student", 3), ("k1", 2), ("student", None)])
def test_speculative_greedy_equals_plain_for_several_members(pair, served, draft, gamma):
    """Every member above the draft, asked with `speculative: true` (or by the server's --speculative default),
    with a fixed γ and with γ adapting: the same text, finish reason and usage as plain decoding; acceptance
    reported per member."""
    _server, _url, plain_client = served
    with serving(pair, speculative=True, draft=draft, gamma=gamma) as (server, url, client):
        d = server.members.resolve(draft)
        targets = [k for k in range(d + 1, server.members.m + 1)]
        for k in targets:
            for i, prompt in enumerate(PROMPTS[:3]):
                plain = plain_client.completions.create(
                    model=f"k{k}", prompt=prompt, max_tokens=20, temperature=0
                )
                body = {} if i else {"speculative": True}  # the server's default, and the request field
                spec = client.completions.create(
                    model=f"k{k}", prompt=prompt, max_tokens=20, temperature=0, extra_body=body
                )
                assert spec.choices[0].text == plain.choices[0].text, (draft, k, prompt)
                assert spec.choices[0].finish_reason == plain.choices[0].finish_reason
                assert spec.usage == plain.usage
            streamed = complete(client, f"k{k}", PROMPTS[3], 20, stream=True)
            assert streamed == complete(plain_client, f"k{k}", PROMPTS[3], 20)
        for k in targets:
            reported = client.models.retrieve(f"k{k}").model_extra["speculative"]
            assert [r["draft"] for r in reported] == [f"k{d}"]
            r = reported[0]
            assert r["rounds"] > 0 and 0 <= r["accepted"] <= r["proposed"]
            assert r["proposed"] > 0 if gamma else True  # a fixed γ drafts every round
            assert r["acceptance_rate"] == round(r["accepted"] / r["proposed"], 4)
            assert r["shared_layers"] == shared_layers(server.members.model(d), server.members.model(k))
        # a request can opt out of the server's default
        before = client.models.retrieve("teacher").model_extra["speculative"][0]["rounds"]
        complete(client, "teacher", PROMPTS[0], 8, extra_body={"speculative": False})
        assert client.models.retrieve("teacher").model_extra["speculative"][0]["rounds"] == before
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        assert f'boomerang_speculative_accepted_total{{member="k{server.members.m}",draft="k{d}"}}' in metrics
        assert 'boomerang_completion_tokens_total{member="k2"}' in metrics


def test_speculative_verification_skips_the_layers_the_draft_shares():
    """Target k3 and draft k1 share their first layer (last order): the target never runs it, and its cache holds
    the draft's buffers for it; the text equals plain decoding."""
    teacher, student, lm = make_pair("qwen3", tie=True)
    service = Service(B.Family(teacher, student, lm, tokenizer=tiny_tokenizer()), draft="k1", gamma=2)
    target = service.members.model(3)
    assert shared_layers(service.members.model(1), target) == 1
    calls = {0: 0, 1: 0}
    for i in calls:
        target.model.layers[i].self_attn.register_forward_hook(
            lambda *a, i=i: calls.__setitem__(i, calls[i] + 1)
        )
    greedy = Sampling(max_tokens=12, temperature=0.0, ignore_eos=True)
    shares = []
    service.start()
    try:
        plain = run_jobs(service, [(3, [5, 6, 7, 8], greedy)])
        assert calls[0] == calls[1] > 0
        calls.update({0: 0, 1: 0})
        holder: list[Job] = []

        def sink(ev):
            job = holder[0]
            if ev[0] == "text" and job.spec is not None:
                shares.append(
                    job.cache.slots[0] is job.spec.cache.slots[0] and job.cache.slots[1].k is not None
                )

        holder.append(Job(3, [5, 6, 7, 8], greedy, sink, speculative=True))
        service.engine.submit(holder[0])
        deadline = time.monotonic() + 60
        while not holder[0].done:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        spec = run_jobs(service, [(3, [5, 6, 7, 8], greedy)], speculative=True)
    finally:
        service.stop()
    assert calls[0] == 0 and calls[1] > 0
    assert shares and all(shares)
    assert spec == plain
    reported = service.engine.spec.for_target(3)[0]
    assert reported["shared_layers"] == 1 and reported["proposed"] > 0


def test_speculative_sampling_follows_the_target_distribution():
    """The accept/reject rule: the first token out is distributed as the target's p, whatever the draft's q."""
    g = torch.Generator().manual_seed(0)
    vocab, trials = 6, 6000
    target = torch.randn(3, vocab, generator=g) * 1.5
    draft = torch.randn(vocab, generator=g) * 1.5
    s = Sampling(max_tokens=8, temperature=0.8)
    p = probabilities(target, s)
    q = probabilities(draft, s)
    counts = torch.zeros(vocab)
    accepted = 0
    for _ in range(trials):
        d = [int(torch.multinomial(q, 1, generator=g)), 0]
        n, token = accept_sampled(d, [q, q], target, s, g)
        first = d[0] if n >= 1 else token
        counts[first] += 1
        accepted += n >= 1
    assert (counts / trials - p[0]).abs().max() < 0.025
    assert abs(accepted / trials - torch.minimum(p[0], q).sum()) < 0.025  # acceptance rate: sum of min(p, q)
    # greedy: drafts stand while they are the target's argmax; then the target's own token
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    assert accept_greedy([1, 0], logits) == (2, 2)
    assert accept_greedy([1, 2], logits) == (1, 0)
    assert accept_greedy([], logits) == (0, 1)


def test_gamma_adapts_to_the_acceptance_rate():
    assert expected_tokens(0.0, 5) == 1.0 and expected_tokens(1.0, 5) == 6.0
    assert best_gamma(0.95, 0.1, 8) == 8  # drafts nearly always stand and cost little: draft many
    assert best_gamma(0.1, 0.5, 8) == 0  # no γ beats plain decoding: a plain step
    assert best_gamma(0.5, 0.55, 8) == 0 and best_gamma(0.8, 0.55, 8) >= 1
    gammas = [best_gamma(a, 0.2, 8) for a in (0.3, 0.5, 0.7, 0.8, 0.9)]
    assert gammas == sorted(gammas) and gammas[0] < gammas[-1]
    assert best_gamma(0.8, 0.2, 8, extra_draft_steps=1) >= best_gamma(0.8, 0.2, 8)
    # verifications that grow with the drafts they check (a CPU's row-by-row products) make drafting dearer
    assert best_gamma(0.66, 0.5, 8) >= 1 and best_gamma(0.66, 0.5, 8, verify_growth=0.45) == 0
    assert best_gamma(0.9, 0.2, 8, verify_growth=0.3) < best_gamma(0.9, 0.2, 8)


def test_a_pair_measures_a_plain_step_then_what_drafts_cost():
    """The first round of a pair is a plain step (the unit); then a draft step's cost and what each verified draft
    adds to a verification are measured against it, and γ follows: where verifying 4 drafts costs 2.6 plain steps
    and a draft step half of one, a 60% acceptance rate does not pay, 95% does."""
    stats = SpecStats().pair(0, 4, 0)
    state = SpecState(0, 0, stats, gamma=4, adaptive=True)
    assert state.next_gamma(8) == 0 and stats.cost_ratio() == 0.5
    stats.record(0, 0, 1, 0.0, 0.010)  # a plain step: 10 ms
    assert stats.plain_s == 0.010 and stats.draft_s is None
    stats.record(4, 2, 3, 0.005, 0.026)  # 4 drafts at 5 ms each, verified in 26 ms
    assert stats.cost_ratio() == pytest.approx(0.5) and stats.verify_growth == pytest.approx(0.4)
    assert stats.summary()["verify_growth"] == 0.4
    assert state.next_gamma(8) == 0  # α ≈ 0.6: no γ pays
    state.accepted = 100
    assert state.next_gamma(8) >= 1


def test_probes_back_off_while_speculation_does_not_pay():
    """While no γ pays, a round drafts one token after 8 plain rounds, then after 16, 32 and 64 (a probe makes the
    draft catch up on every token it skipped); once a γ pays again the interval starts over."""
    stats = SpecStats().pair(0, 4, 0)
    stats.record(0, 0, 1, 0.0, 0.010)
    stats.record(1, 0, 1, 0.008, 0.014)  # a draft step costs 0.8 plain steps; verifying one draft 1.4
    state = SpecState(0, 0, stats, gamma=4, adaptive=True)
    probes = [i for i in range(1, 8 + 16 + 32 + 64 + 64 + 1) if state.next_gamma(8)]
    assert probes == [8, 24, 56, 120, 184]
    state.accepted = 10_000  # drafts now stand: speculation pays, and the interval is back to 8
    stats.draft_s = 0.001
    assert state.next_gamma(8) >= 1 and state.probe_every == 8 and state.plain_rounds == 0


def test_seeded_sampling_repeats_alone_in_a_batch_and_speculative(pair, served):
    _server, _url, client = served
    kw = dict(temperature=1.3, top_p=0.95, seed=1234)
    first = complete(client, "k2", PROMPTS[0], 16, **kw)
    assert complete(client, "k2", PROMPTS[0], 16, **kw) == first
    assert complete(client, "k2", PROMPTS[0], 16, temperature=1.3, top_p=0.95, seed=99) != first
    # beside other requests, in one batch
    items = [("seeded", PROMPTS[0])] + [("other", p) for p in PROMPTS[1:]]
    got = concurrently(
        lambda it: complete(client, "k2", it[1], 16, **(kw if it[0] == "seeded" else {"temperature": 0.7})),
        items,
    )
    assert got[0] == first
    # speculative sampling with a seed repeats too (alone and beside others), and differs from greedy
    spec = dict(extra_body={"speculative": True}, **kw)
    a = complete(client, "teacher", PROMPTS[1], 16, **spec)
    got = concurrently(lambda i: complete(client, "teacher", PROMPTS[1], 16, **spec), range(3))
    assert got == [a, a, a]


def test_a_request_cancelled_mid_batch_does_not_disturb_the_others(served):
    server, _url, client = served
    n = 100
    expected = [complete(client, "k1", p, n) for p in PROMPTS[:2]]
    before = client.models.retrieve("k1").model_extra["stats"]["completion_tokens"]
    server.engine.peak_batch = 0
    started = threading.Event()

    def cancelled():
        stream = client.completions.create(
            model="k1",
            prompt=PROMPTS[2],
            max_tokens=n,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for i, _chunk in enumerate(stream):
            started.set()
            if i == 2:
                break
        stream.close()  # the client goes away mid-generation
        return None

    def other(prompt):
        started.wait(30)
        return complete(client, "k1", prompt, n)

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(cancelled)] + [pool.submit(other, p) for p in PROMPTS[:2]]
        results = [f.result(timeout=120) for f in futures]
    assert results[1:] == expected
    deadline = time.monotonic() + 30
    while server.engine.load():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    generated = client.models.retrieve("k1").model_extra["stats"]["completion_tokens"] - before
    assert 2 * n < generated < 3 * n  # the cancelled request stopped early
    assert server.engine.peak_batch >= 2


def test_memory_with_every_member_warm_and_batching_on(tmp_path):
    """Weights: only the teacher's and the student's tensors; with every member warm and a batch of requests on
    every member, weights plus KV caches stay within 1.10x teacher + student (a model wide enough that, as in
    real models, a layer's weights outweigh a few hundred positions of its KV cache)."""
    wide = dict(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=1)
    teacher, student, lm = make_pair("llama", tie=True, **wide)
    server = FamilyServer(B.Family(teacher, student, lm, tokenizer=tiny_tokenizer()))

    def nbytes(tensors):
        seen = {}
        for t in tensors:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return seen

    base = nbytes([*teacher.parameters(), *teacher.buffers(), *student.parameters(), *student.buffers()])
    with server.background() as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        members = range(server.members.m + 1)
        server.engine.warm(list(members))
        work = [(f"k{k}", p) for k in members for p in PROMPTS[:3]]
        concurrently(lambda w: complete(client, w[0], w[1], 40), work)
        spec = concurrently(
            lambda k: complete(client, f"k{k}", PROMPTS[0], 40, extra_body={"speculative": True}), [2, 3, 4]
        )
        assert spec == [complete(client, f"k{k}", PROMPTS[0], 40) for k in (2, 3, 4)]
        health = httpx.get(url.removesuffix("/v1") + "/health").json()
    weights = {}
    for k in members:
        m = server.members.model(k)
        weights |= nbytes([*m.parameters(), *m.buffers()])
    assert set(weights) <= set(base)  # no member holds a tensor of its own
    assert server.engine.peak_batch >= 2 and health["peak_kv_cache_bytes"] == server.engine.peak_kv_bytes > 0
    ratio = (sum(weights.values()) + server.engine.peak_kv_bytes) / sum(base.values())
    assert ratio <= 1.10, ratio


# ---- the command line and the Python API -------------------------------------------------------------------------


@pytest.fixture
def no_loading(monkeypatch):
    """Fail loudly if a model is loaded: bad input must be rejected before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr("boomerang.family.Family.__init__", refuse)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--max-batch", "0"], ["--max-batch must be at least 1"]),
        (["--max-gamma", "0"], ["--max-gamma must be between 1 and 32"]),
        (["--gamma", "9"], ["--gamma must be between 1 and --max-gamma (8)"]),
        (["--draft", "biggest"], ["--draft 'biggest' is not a member name"]),
        (["--draft", "k4"], ["the draft must be smaller than the teacher (k4)", "k0..k3"]),
        (["--device", "tpu"], ["unknown --device 'tpu'"]),
    ],
)
def test_cli_rejects_bad_engine_options_before_loading(pair, capsys, no_loading, extra, words):
    from boomerang.cli.app import run

    t_dir, s_dir = pair
    code = run(["serve", "--teacher", str(t_dir), "--student", str(s_dir), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for w in words:
        assert w in err, err


def test_python_api_rejects_a_draft_that_is_not_smaller_than_the_teacher():
    teacher, student, lm = make_pair("llama", tie=True)
    family = B.Family(teacher, student, lm, tokenizer=tiny_tokenizer())
    with pytest.raises(B.BoomerangError, match="the draft must be a smaller member"):
        Service(family, draft="teacher")
    with pytest.raises(B.BoomerangError, match="--draft: the model `k9` does not exist"):
        Service(family, draft="k9")
    with pytest.raises(B.BoomerangError, match="--max-batch must be at least 1"):
        Service(family, max_batch=0)


@pytest.mark.real
def test_real_smollm2_batched_and_speculative_greedy_equal_alone(real_teacher_dir):
    """SmolLM2-135M (fp32) with its every-other-layer student, `last` order: chat prompts of different lengths,
    batched and speculative (on the teacher, and on k8, which shares its first 8 layers with the student), give
    token for token the text of each request alone."""
    teacher = B.load_model(real_teacher_dir)
    tok = B.load_tokenizer(real_teacher_dir)
    service = Service(B.Family(teacher, B.init_student(teacher), tokenizer=tok), order="last", gamma=3)
    questions = ["What is the capital of France?", "Why is the sky blue?", "Name three fruits."]
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for q in questions
    ]
    greedy = Sampling(max_tokens=16, temperature=0.0, ignore_eos=True)
    m = service.members.m
    service.start()
    try:
        for k in (m // 2, m):
            alone = [run_jobs(service, [(k, p, greedy)])[0] for p in prompts]
            assert run_jobs(service, [(k, p, greedy) for p in prompts]) == alone, k
            assert [run_jobs(service, [(k, p, greedy)], speculative=True)[0] for p in prompts] == alone, k
        assert service.engine.peak_batch == len(prompts)
        assert service.engine.spec.for_target(m // 2)[0]["shared_layers"] == m // 2
    finally:
        service.stop()


@pytest.mark.real
def test_real_smollm2_bf16_decoding_row_is_the_same_alone_and_batched(real_teacher_dir):
    """In bf16 on a CPU oneDNN computes a one-row matrix product with another kernel than a several-row one, which
    rounds differently (on an AMD Zen 4 CPU, 3 of these 4 rows differed alone and batched, by up to 0.375 in a
    logit); the engine's decoding passes compute products row by row with PyTorch's own kernels, so each row's
    logits are bit for bit the same alone and in a batch. Outside the engine's passes the model is untouched."""
    teacher = B.load_model(real_teacher_dir, dtype="bfloat16")
    reference = B.load_model(real_teacher_dir, dtype="bfloat16")
    run = runner.Runner(teacher)
    assert runner.row_products(teacher) and run.rowwise
    prompts = [list(range(100 + 7 * i, 140 + 9 * i)) for i in range(4)]
    assert torch.equal(run.step_after(prompts, 5, batched=False), run.step_after(prompts, 5, batched=True))
    assert torch.backends.mkldnn.enabled
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        assert torch.equal(teacher(ids).logits, reference(ids).logits)
        assert torch.equal(teacher(ids[:, :1]).logits, reference(ids[:, :1]).logits)


def _onednn_during_passes(
    run: runner.Runner, passes: tuple[list[int], ...] = ([3, 5, 7, 11], [2], [4, 6, 8]), exact: bool = True
) -> list[bool]:
    """Run ``passes`` on one fresh cache (by default a prefill, a decoding step and a verifying step): whether
    oneDNN was on in each (seen by the head)."""
    seen: list[bool] = []
    head = run.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda *_: seen.append(torch.backends.mkldnn.enabled))
    try:
        c = run.cache(16)
        for i, tokens in enumerate(passes):
            run.forward([c], [tokens], last_only=i == 0, exact=exact)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_decoding_products_run_row_by_row_only_in_reduced_precision_on_a_cpu(arch):
    """fp32 keeps oneDNN/MKL throughout; in bf16 and fp16 on a CPU the decoding and verifying passes (not
    prefills) turn oneDNN off, so PyTorch's own kernels compute every row as they compute a lone row, and the
    setting is back as it was after each pass. Rows are the same alone and batched in every precision."""
    teacher = make_pair(arch)[0]
    run = runner.Runner(teacher)
    assert not runner.row_products(teacher) and not run.rowwise
    assert _onednn_during_passes(run) == [True, True, True]
    prompts = [[3, 5, 7, 11], [2, 4], [9, 8, 7, 6, 5, 4]]
    for dtype in (torch.bfloat16, torch.float16):
        model = teacher.to(dtype)
        run = runner.Runner(model)
        assert runner.row_products(model) and run.rowwise
        assert _onednn_during_passes(run) == [True, False, False]
        assert torch.backends.mkldnn.enabled
        # a draft catching up on several tokens need not round as decoding does: oneDNN; one token: row by row
        assert _onednn_during_passes(run, ([3, 5, 7, 11], [2, 4], [6]), exact=False) == [True, True, False]
        assert torch.equal(
            run.step_after(prompts, 5, batched=False), run.step_after(prompts, 5, batched=True)
        ), dtype


def test_onednn_setting_is_restored_after_nested_and_concurrent_passes():
    """The setting is process-wide: it stays off while any pass runs (two engines' passes may overlap) and is
    restored to what it was before the first, including a user's own ``enabled = False``."""
    assert torch.backends.mkldnn.enabled
    with runner._without_onednn():
        with runner._without_onednn():
            assert not torch.backends.mkldnn.enabled
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled
    started, release = threading.Event(), threading.Event()

    def other() -> None:
        with runner._without_onednn():
            started.set()
            release.wait(5)

    t = threading.Thread(target=other)
    t.start()
    started.wait(5)
    with runner._without_onednn():
        pass
    assert not torch.backends.mkldnn.enabled  # the other pass is still running
    release.set()
    t.join()
    assert torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with runner._without_onednn():
            pass
        assert not torch.backends.mkldnn.enabled
    finally:
        torch.backends.mkldnn.enabled = True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_one_query_attention_matches_sdpa_and_keeps_the_dtype(dtype):
    """A decoding query's attention (computed in fp32 on a CPU for bf16 and fp16) equals SDPA's in the model's
    dtype up to that dtype's rounding, with grouped-query heads."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 1, 16, generator=g).to(dtype)
    k, v = (torch.randn(1, 2, 37, 16, generator=g).to(dtype) for _ in range(2))
    out = kv._one_query(q, k, v, 0.25, True)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), scale=0.25, enable_gqa=True
    )
    assert out.dtype == dtype and out.shape == (1, 6, 1, 16)
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_engine_on_a_gpu_batched_and_speculative_equal_alone(dtype):
    teacher, student, lm = make_pair("qwen3", tie=True)
    family = B.Family(teacher, student, lm, tokenizer=tiny_tokenizer()).to("cuda", dtype)
    service = Service(family, gamma=2)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20]]
    greedy = Sampling(max_tokens=10, temperature=0.0, ignore_eos=True)
    service.start()
    try:
        alone = [run_jobs(service, [(3, p, greedy)])[0] for p in prompts]
        assert run_jobs(service, [(3, p, greedy) for p in prompts]) == alone
        assert [run_jobs(service, [(3, p, greedy)], speculative=True)[0] for p in prompts] == alone
        assert service.engine.peak_batch == len(prompts)
    finally:
        service.stop()
