"""The gateway in front of emulated engines, driven by the real `openai` client: requests are
routed by the plan (the same RoutingTable the simulator uses), proxied with their streams, and
counted; bad backends files are refused with one line; an unreachable backend is retried on
another replica. Servers bind 127.0.0.1 on ephemeral ports; every load is bounded."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import openai
import pytest

import hetserve
from hetserve.catalog import load_catalog
from hetserve.emulate import Emulator, group_emulator
from hetserve.errors import HetserveError
from hetserve.gateway import Gateway, GatewayServer, parse_backends
from hetserve.gateway.backends import Resolve, addresses, expand, names, resolve, to_json
from hetserve.route import RoutingTable
from hetserve.route.request import WORDS, PromptCounter

from .conftest import hang_up_after, in_background

MODEL = "llama-3.1-8b"


@pytest.fixture(scope="module")
def plan():
    """Two groups of H100s with different chunk budgets, splitting azure-conv's classes."""
    p = hetserve.make_plan(MODEL, workload="azure-conv", rate=30, baselines=False,
                           catalog=load_catalog().only(["A10G", "H100-SXM"]))
    assert len(p.groups) >= 2
    return p


@contextmanager
def running(plan, dead: dict[str, int] | None = None, extra: dict[str, list[str]] | None = None,
            **options):
    """Emulators for every replica of the plan and the gateway in front, on one loop in a
    thread. `dead`: group id -> how many of its URLs point at a closed port instead;
    `options`: Gateway's (api_keys, admin_token, max_body, counters: the emulators' too)."""
    counters = options.get("counters") or {}
    emulators = [group_emulator(plan, g, counter=counters.get(g.model, WORDS))
                 for g in plan.groups]
    servers: list[GatewayServer] = []

    async def start():
        urls = {g.id: await e.start() for g, e in zip(plan.groups, emulators, strict=True)}
        for gid, n in (dead or {}).items():
            urls[gid] = [f"http://127.0.0.1:{_closed_port()}" for _ in range(n)] + urls[gid]
        for gid, more in (extra or {}).items():
            urls[gid] = more + urls[gid]
        servers.append(GatewayServer(Gateway(plan, urls, **options)))
        servers[0].gateway.backends = urls  # what the test may send back through /admin/plan
        return await servers[0].start()

    async def stop():
        for server in servers:
            await server.stop()
        for e in emulators:
            await e.stop()

    with in_background(start, stop) as url:
        yield url, servers[0].gateway


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counts(url: str) -> dict[tuple[str, str], float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out = {}
    for m in re.finditer(r'^hetserve:requests_total\{group="([^"]+)",model="[^"]+",'
                         r'outcome="([^"]+)"\} (\S+)$', text, re.M):
        out[(m.group(1), m.group(2))] = float(m.group(3))
    return out


def test_requests_are_routed_by_the_plan_and_streamed_through(plan):
    entry = plan.models[0]
    table = RoutingTable.from_plan(entry, plan.groups, [plan.deployment(g) for g in plan.groups])
    ids = [g.id for g in plan.groups]
    # one prompt length per key (at max_tokens 3) that the plan routes to one group only: it
    # must land there
    keys = {table.key(lo + 1, 3): lo + 1 for lo in table.prompt_edges[:-1]}
    only = {k: table.shares[k][0][0] for k in keys if len(table.shares.get(k, ())) == 1}
    assert only, "the plan splits every prompt range"
    lengths = {k: keys[k] for k in only}
    with running(plan) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        for n in lengths.values():
            r = c.completions.create(model=MODEL, prompt=[7] * n, max_tokens=3)
            assert r.usage.prompt_tokens == n and r.usage.completion_tokens == 3
        chunks = list(c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "a b"}], max_tokens=4,
            stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].usage.completion_tokens == 4
        got = counts(url)
        assert [m.id for m in c.models.list().data] == [MODEL, "meta-llama/Llama-3.1-8B-Instruct"]
    served = {}
    for k in lengths:
        served[ids[only[k]]] = served.get(ids[only[k]], 0) + 1
    chat_key = table.key(2 + 4, 4)
    for gid, n in served.items():
        extra = 1 if any(ids[g] == gid for g, _ in table.shares[chat_key]) else 0
        assert got.get((gid, "ok"), 0) >= n and got.get((gid, "ok"), 0) <= n + extra
    assert sum(v for (g, o), v in got.items() if o == "ok") == len(lengths) + 1


def test_a_burst_is_all_served_and_counted(plan):
    with running(plan) as (url, gateway):
        async def burst():
            c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0,
                                   timeout=60)
            sizes = [20, 300, 1500, 3000] * 6
            done = await asyncio.gather(*(c.completions.create(
                model=MODEL, prompt=[1] * n, max_tokens=6, stream=k % 2 == 0)
                for k, n in enumerate(sizes)))
            await c.close()
            return done

        done = asyncio.run(burst())
        got = counts(url)
        assert all(f.replicas for f in gateway.fleets.values())
        assert all(r.in_flight == 0 and r.waiting_tokens == 0
                   for f in gateway.fleets.values() for r in f.replicas)
    assert len(done) == 24
    assert sum(v for (_, o), v in got.items() if o == "ok") == 24


def test_an_unreachable_backend_is_retried_on_another_replica(plan):
    # dead URLs beside every group's live ones; requests one at a time, so the choices are
    # deterministic (the scan within a group rotates) and some land on a dead one
    # (active health checks off: they would eject the dead URLs before any request)
    with running(plan, dead={g.id: 2 for g in plan.groups}, health_interval=0) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        for n in (10, 100, 1000, 3000, 6000):
            assert c.completions.create(model=MODEL, prompt=[1] * n,
                                        max_tokens=2).usage.completion_tokens == 2
        got = counts(url)
        # the dead URL was tried and the request served elsewhere: nothing lost
        assert sum(v for (_, o), v in got.items() if o == "unreachable") >= 1
        assert sum(v for (_, o), v in got.items() if o == "ok") == 5
        with pytest.raises(openai.NotFoundError, match="gpt-9"):
            c.completions.create(model="gpt-9", prompt="hi")
        with pytest.raises(openai.BadRequestError, match="max_tokens: expected an integer"):
            c.completions.create(model=MODEL, prompt="hi", max_tokens=0)


def test_backends_file_is_checked_against_the_plan(plan):
    ids = [g.id for g in plan.groups]
    good = {g: ["http://127.0.0.1:9"] for g in ids}
    assert parse_backends(good, plan, "b.yaml") == good
    for data, message in [
        ([1], "b.yaml: expected a mapping"),
        ({**good, "g99": ["http://x"]}, "b.yaml: group 'g99' is not in the plan"),
        ({ids[0]: []}, f"b.yaml: group {ids[0]}: expected a non-empty list"),
        ({**good, ids[0]: ["ftp://x"]}, "is not an http(s) URL"),
        ({ids[0]: ["http://x"]}, "b.yaml: no URLs for group(s)"),
    ]:
        with pytest.raises(HetserveError, match=re.escape(message)):
            parse_backends(data, plan, "b.yaml")


def test_backends_names_to_resolve_are_checked_and_expanded(plan):
    ids = [g.id for g in plan.groups]
    pods = "http://llama-pods.serving.svc.cluster.local:8000"
    spec = parse_backends({ids[0]: [{"url": pods + "/", "resolve": True}],
                           **{g: ["http://10.0.0.9:8000"] for g in ids[1:]}}, plan, "b.yaml")
    (entry,) = spec[ids[0]]
    assert entry == Resolve(pods, "http", "llama-pods.serving.svc.cluster.local", 8000, "")
    assert names(spec) == [entry] and to_json(spec)[ids[0]] == [{"url": pods, "resolve": True}]
    # never resolved (or nothing yet): the URL itself stands for the group, one replica
    assert expand(spec) == {ids[0]: [pods], **{g: ["http://10.0.0.9:8000"] for g in ids[1:]}}
    assert expand(spec, {pods: []})[ids[0]] == [pods]
    got = expand(spec, {pods: addresses([("10.0.0.2", 8000), ("fd00::1", 8000),
                                         ("10.0.0.10", 8000), ("10.0.0.2", 8000)])})
    # deduplicated, numerically sorted, IPv6 in brackets; the other groups as given
    assert got[ids[0]] == ["http://10.0.0.2:8000", "http://10.0.0.10:8000",
                           "http://[fd00::1]:8000"]
    assert got[ids[-1]] == ["http://10.0.0.9:8000"]
    # the default port and a path are kept; resolve: false is a plain URL
    (named,) = parse_backends({g: [{"url": "http://pods/v", "resolve": True}] for g in ids},
                              plan, "b.yaml")[ids[0]]
    assert named.urls([("10.1.1.1", named.port)]) == ["http://10.1.1.1:80/v"]
    plain = {g: [{"url": "http://10.0.0.9:8000", "resolve": False}] for g in ids}
    assert parse_backends(plain, plan, "b.yaml")[ids[0]] == ["http://10.0.0.9:8000"]
    good = {g: ["http://127.0.0.1:9"] for g in ids}
    for entry, message in [
        ({"url": pods, "resolve": True, "replicas": 2},
         f"b.yaml: group {ids[0]}: {pods}: replicas and resolve exclude each other"),
        ({"url": pods, "resolve": "yes"}, f"b.yaml: group {ids[0]}: {pods}: resolve: expected "
                                          "true or false, got 'yes'"),
        ({"url": pods, "resolv": True}, "expected a URL, {url: URL, replicas: N} or {url: URL, "
                                        "resolve: true}, got keys url, resolv"),
        ({"url": "ftp://pods", "resolve": True}, "'ftp://pods' is not an http(s) URL"),
        ({"url": "http://pods:99999", "resolve": True}, "http://pods:99999: not a valid port"),
        ({"url": "http://u@pods:80", "resolve": True}, "resolve: expected http://HOST"),
        ({"url": "https://pods", "resolve": True}, "https://pods: resolve: expected an http URL "
                                                   "(the replicas are reached by address"),
    ]:
        with pytest.raises(HetserveError, match=re.escape(message)):
            parse_backends({**good, ids[0]: [entry]}, plan, "b.yaml")


def test_the_default_resolver_asks_getaddrinfo():
    assert asyncio.run(resolve("127.0.0.1", 8000)) == [("127.0.0.1", 8000)]
    assert ("127.0.0.1", 80) in asyncio.run(resolve("localhost", 80))


def test_serve_and_emulate_refuse_bad_input_in_one_line(run_cli, plan, tmp_path):
    from .conftest import assert_bad_input

    path = tmp_path / "plan.json"
    plan.save(path)
    assert_bad_input(run_cli("serve", path), needs=["--backends", "--emulate"])
    bad = tmp_path / "backends.yaml"
    bad.write_text("g99: [http://127.0.0.1:9]\n")
    assert_bad_input(run_cli("serve", path, "--backends", bad), needs=["backends.yaml", "g99"])
    bad.write_text("g0: [{url: http://pods:8000, resolve: true, replicas: 2}]\n")
    assert_bad_input(run_cli("serve", path, "--backends", bad),
                     needs=["backends.yaml", "group g0", "replicas and resolve exclude"])
    bad.write_text("g0: [unclosed\n")
    assert_bad_input(run_cli("serve", path, "--backends", bad), needs=["backends.yaml", "YAML"])
    assert_bad_input(run_cli("emulate", "-m", "llama-3.1-70b", "-a", "L4"),
                     needs=["L4 TP1", "weights need"])
    assert_bad_input(run_cli("emulate", "-m", MODEL, "-a", "L4", "--replicas", "0"),
                     needs=["--replicas"])
    assert_bad_input(run_cli("up", path), needs=["--emulate"])
    assert_bad_input(run_cli("serve", path, "--emulate", "--tokenizer", tmp_path / "no.json"),
                     needs=["no.json", "no such file"], scrub=[tmp_path])
    bad.write_text("{}")
    assert_bad_input(run_cli("serve", path, "--emulate", "--tokenizer", bad),
                     needs=["backends.yaml", "tokenizer.json"], scrub=[tmp_path])
    assert_bad_input(run_cli("up", path, "--emulate", "--tokenizer", f"gpt-9={bad}"),
                     needs=["gpt-9", MODEL])


def make_tokenizer(path) -> None:
    """A small BPE tokenizer.json (Hugging Face tokenizers) that splits words into several
    tokens and puts a BOS token first, as Llama's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20,
                            trainers.BpeTrainer(vocab_size=40, special_tokens=["<unk>", "<s>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(str(path))


def test_a_tokenizer_file_counts_prompts_at_the_gateway_and_the_emulators(plan, tmp_path,
                                                                          caplog):
    import logging

    from tokenizers import Tokenizer

    path = tmp_path / "tokenizer.json"
    make_tokenizer(path)
    tok = Tokenizer.from_file(str(path))
    text = "the quick brown fox jumps over the lazy dog " * 40  # 360 words
    exact = len(tok.encode(text).ids)
    assert exact > 512  # over 2 tokens a word: another prompt range than the word count's
    counter = PromptCounter.from_file(path)
    table = RoutingTable.from_plan(plan.models[0], plan.groups,
                                   [plan.deployment(g) for g in plan.groups])
    with caplog.at_level(logging.INFO, logger="hetserve.gateway.access"), \
            running(plan, counters={MODEL: counter}) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        r = c.completions.create(model=MODEL, prompt=text, max_tokens=2)
        chat = c.chat.completions.create(model=MODEL, max_tokens=2, messages=[
            {"role": "user", "content": text}])
    assert r.usage.prompt_tokens == exact  # the emulator counts as the tokenizer does
    # a chat: the content without BOS, plus the template's overhead
    assert chat.usage.prompt_tokens == exact - 1 + 4
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "hetserve.gateway.access"]
    assert [line["prompt_tokens"] for line in lines] == [exact, exact + 3]
    assert lines[0]["key"] == table.label(table.key(exact, 2)) != table.label(table.key(360, 2))


def test_up_runs_a_plan_and_a_burst_through_it(run_cli, small_plan):
    res = run_cli("up", small_plan, "--emulate", "--port", "0", "--burst", "8")
    assert res.code == 0, res.summary()
    assert "8/8" in res.out and "after the burst" in res.out and "try: curl" in res.out


def post(url: str, data: bytes, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_keys_limits_and_errors_in_openais_shape(plan):
    with running(plan, api_keys=["k1"], admin_token="adm", max_body=4096) as (url, gateway):
        ok = openai.OpenAI(base_url=url + "/v1", api_key="k1", max_retries=0, timeout=60)
        assert ok.completions.create(model=MODEL, prompt="a b", max_tokens=2).usage
        with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
            openai.OpenAI(base_url=url + "/v1", api_key="k2", max_retries=0).models.list()
        status, body = post(url + "/v1/completions", b"{not json", "k1")
        assert status == 400 and body["error"]["message"] == "body: not valid JSON"
        status, body = post(url + "/v1/completions", b'{"prompt": "' + b"x " * 4000 + b'"}',
                            "k1")
        assert status == 413 and body["error"]["code"] == 413
        with pytest.raises(openai.NotFoundError, match="`gpt-9` does not exist"):
            ok.completions.create(model="gpt-9", prompt="hi")
        # the plan and backends swap at once; the admin token guards it
        swap = json.dumps({"plan": json.loads(plan.model_dump_json()),
                           "backends": gateway.backends}).encode()
        assert post(url + "/admin/plan", swap, "k1")[0] == 401
        status, body = post(url + "/admin/plan", swap, "adm")
        assert status == 413  # the plan is larger than this gateway's 4 KiB body limit
    with running(plan, admin_token="adm") as (url, gateway):
        old = gateway.routers
        swap = json.dumps({"plan": json.loads(plan.model_dump_json()),
                           "backends": gateway.backends}).encode()
        status, body = post(url + "/admin/plan", swap, "adm")
        assert status == 200 and body["models"] == [MODEL] and gateway.routers is not old
        assert openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0).completions \
            .create(model=MODEL, prompt="a", max_tokens=1).usage.completion_tokens == 1
        broken = json.dumps({"plan": {"kind": "hetserve-plan"}, "backends": {}}).encode()
        status, body = post(url + "/admin/plan", broken, "adm")
        assert status == 400 and "POST /admin/plan: plan" in body["error"]["message"]
        got = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
        assert 'hetserve:plan_swaps_total 1.0' in got
        assert 'hetserve:refused_total{status="400"} 1.0' in got


def test_a_backend_killed_mid_run_loses_no_request(plan, tmp_path):
    """A replica in a process of its own is killed (SIGKILL) while 40 requests (half streamed)
    are in flight: each one completes (retried elsewhere when nothing had reached its client) or
    ends with a clear error, none hangs, and the gateway's counts add up."""
    import subprocess
    import sys
    from pathlib import Path

    g = plan.groups[0]
    dep = plan.deployment(g)
    victim = subprocess.Popen(
        [str(Path(sys.executable).with_name("hetserve")), "emulate", "-m", MODEL, "-a",
         dep.accelerator.name, "--tp", str(dep.tp), "--max-num-batched-tokens",
         str(dep.chunk_tokens), "--max-num-seqs", str(dep.max_seqs), "--port", "0"],
        stdout=subprocess.PIPE, text=True)
    try:
        victim_url = victim.stdout.readline().split()[2]
        with running(plan, extra={g.id: [victim_url] * 3}) as (url, _):
            async def run():
                c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0,
                                       timeout=60)

                async def one(k: int) -> str:
                    try:
                        if k % 2:
                            stream = await c.completions.create(
                                model=MODEL, prompt=[1] * 300, max_tokens=150, stream=True)
                            async for _ in stream:
                                pass
                        else:
                            await c.completions.create(model=MODEL, prompt=[1] * 300,
                                                       max_tokens=150)
                        return "ok"
                    except openai.APIError as exc:
                        return f"error: {exc}"

                tasks = [asyncio.create_task(one(k)) for k in range(40)]
                await asyncio.sleep(0.3)
                victim.kill()
                done = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
                await c.close()
                return done

            done = asyncio.run(run())
            text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    finally:
        victim.kill()
        victim.wait(10)
    outcomes: dict[str, float] = {}
    for m in re.finditer(r'^hetserve:requests_total\{group="[^"]+",model="[^"]+",'
                         r'outcome="([^"]+)"\} (\S+)$', text, re.M):
        outcomes[m.group(1)] = outcomes.get(m.group(1), 0) + float(m.group(2))
    refused = sum(float(v) for v in re.findall(
        r'^hetserve:refused_total\{status="502"\} (\S+)$', text, re.M))
    errors = [d for d in done if d != "ok"]
    assert len(done) == 40 and len(errors) < 40
    assert outcomes.get("broken", 0) + outcomes.get("unreachable", 0) >= 1  # the kill bit
    assert outcomes.get("ok", 0) == 40 - len(errors)
    assert outcomes.get("broken", 0) + refused == len(errors)  # every failure was told
    assert all("failed mid-stream" in e or "served the request" in e for e in errors)


def test_saturated_replicas_shed_load_with_retry_after(plan):
    """One request in flight per replica at most: a burst beyond that is answered 503 with
    Retry-After at once (nothing queues without bound), and every request is accounted for."""
    import aiohttp

    with running(plan, queue_factor=1e-9) as (url, gateway):
        replicas = sum(len(f.replicas) for f in gateway.fleets.values())

        async def burst():
            async with aiohttp.ClientSession() as session:
                async def one():
                    async with session.post(url + "/v1/completions", json={
                            "model": MODEL, "prompt": "a b c", "max_tokens": 200}) as resp:
                        await resp.read()
                        return resp.status, resp.headers.get("Retry-After")

                return await asyncio.gather(*(one() for _ in range(4 * replicas)))

        got = asyncio.run(burst())
        text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    statuses = [s for s, _ in got]
    assert statuses.count(200) >= replicas and statuses.count(503) >= replicas
    assert set(statuses) <= {200, 503}
    assert all(after == "1" for s, after in got if s == 503)
    assert f'hetserve:refused_total{{status="503"}} {float(statuses.count(503))}' in text


def test_access_log_is_one_json_line_per_request_without_text(plan, caplog):
    import logging

    secret = "confidential words nobody may log"
    with caplog.at_level(logging.INFO, logger="hetserve.gateway.access"), \
            running(plan) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        c.completions.create(model=MODEL, prompt=secret, max_tokens=3)
        list(c.completions.create(model=MODEL, prompt=secret, max_tokens=3, stream=True))
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "hetserve.gateway.access"]
    assert [line["stream"] for line in lines] == [False, True]
    assert all(line["outcome"] == "ok" and line["prompt_tokens"] == 5 for line in lines)
    assert all(line["key"] == "in1-256/out<16" and line["max_tokens"] == 3 for line in lines)
    assert lines[1]["ttft"] is not None and lines[1]["ttft"] <= lines[1]["seconds"]
    assert not any("confidential" in r.getMessage() or "lorem" in r.getMessage()
                   for r in caplog.records)


def test_a_backend_answering_5xx_is_left_for_another_replica(plan):
    """A replica that answers 500 before any byte reached the client: the request goes to
    another replica (that one set aside a moment), and the client never sees the 500."""
    from aiohttp import web

    async def fail(request):
        return web.json_response({"error": {"message": "boom"}}, status=500)

    with fake_backend(fail) as bad, running(plan, extra={g.id: [bad] * 2 for g in plan.groups},
                                            health_interval=0) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        for n in (10, 100, 600, 1500, 3000, 6000) * 2:
            assert c.completions.create(model=MODEL, prompt=[1] * n,
                                        max_tokens=2).usage.completion_tokens == 2
        got = counts(url)
    assert sum(v for (_, o), v in got.items() if o == "http_500") >= 1
    assert sum(v for (_, o), v in got.items() if o == "ok") == 12


def test_a_client_gone_mid_stream_is_not_the_backends_fault(plan):
    with running(plan) as (url, gateway):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        for _ in range(3):
            hang_up_after(c.completions.create(model=MODEL, prompt="a b", max_tokens=3000,
                                               stream=True), 3)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
                r.in_flight for f in gateway.fleets.values() for r in f.replicas):
            time.sleep(0.05)
        got = counts(url)
        replicas = [r for f in gateway.fleets.values() for r in f.replicas]
        assert all(r.in_flight == 0 and r.waiting_tokens == 0 for r in replicas)
        assert all(r.down_until <= time.monotonic() for r in replicas)  # none set aside
    assert sum(v for (_, o), v in got.items() if o == "cancelled") == 3
    assert not any(o in ("unreachable", "broken") for (_, o) in got)


def test_health_checks_eject_a_replica_and_bring_it_back(plan):
    """A replica whose /health fails is ejected (no request is sent to it) and comes back once
    it answers: checked every 0.1 s here."""
    port = _closed_port()
    gid = plan.groups[0].id
    with running(plan, extra={gid: [f"http://127.0.0.1:{port}"]}, health_interval=0.1) \
            as (url, gateway):
        fleet = next(iter(gateway.fleets.values()))
        late = next(r for r in fleet.replicas if r.url.endswith(f":{port}"))
        deadline = time.monotonic() + 5
        while late.healthy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not late.healthy
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        for n in (10, 100, 600, 1500, 3000, 6000) * 2:
            c.completions.create(model=MODEL, prompt=[1] * n, max_tokens=2)
        assert not any(o == "unreachable" for (_, o) in counts(url))  # never tried
        # the replica starts (an emulator on that port): it is brought back
        emu = Emulator(plan.deployment(plan.groups[0]), MODEL, 1, ports=[port])
        with in_background(emu.start, emu.stop):
            deadline = time.monotonic() + 5
            while not late.healthy and time.monotonic() < deadline:
                time.sleep(0.05)
            assert late.healthy
            text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    for change in ("ejected", "back"):
        assert re.search(rf'^hetserve:health_changes_total\{{change="{change}",[^}}]*\}} 1\.0$',
                         text, re.M)


def access_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records
            if r.name == "hetserve.gateway.access"]


def test_the_context_limit_is_refused_before_routing_as_a_client_error(plan, caplog):
    """A prompt, or prompt + max_tokens, over the plan's max_model_len: the gateway answers
    vLLM's 400 without a backend, counts it as refused (never against a group) and logs it as
    "refused"; the emulated engines refuse the same (their max_model_len is the plan's)."""
    import logging

    limit = plan.models[0].context_limit
    assert limit == plan.models[0].max_model_len and 2048 < limit < 131_072
    with caplog.at_level(logging.INFO, logger="hetserve.gateway.access"), \
            running(plan) as (url, gateway):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError) as long_prompt:
            c.completions.create(model=MODEL, prompt="word " * (limit + 10), max_tokens=5)
        assert long_prompt.value.status_code == 400
        assert long_prompt.value.body["message"] == (
            f"This model's maximum context length is {limit} tokens. However, your request "
            f"has {limit + 10} input tokens. Please reduce the length of the input messages.")
        with pytest.raises(openai.BadRequestError) as too_much:
            c.chat.completions.create(model=MODEL, max_tokens=40_000, messages=[
                {"role": "user", "content": "a b c"}])
        assert too_much.value.body["message"] == (
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{7 + 40_000} tokens (7 in the messages, 40000 in the completion). Please reduce "
            "the length of the messages or completion.")
        assert too_much.value.body["param"] == "max_tokens"
        # exactly at the limit is served
        assert c.completions.create(model=MODEL, prompt=[1] * (limit - 2),
                                    max_tokens=2).usage.completion_tokens == 2
        got = counts(url)
        text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
        # the engines behind refuse the same on their own
        backend = gateway.fleets[MODEL].replicas[0].url
        direct = openai.OpenAI(base_url=backend + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError, match=f"maximum context length is {limit} "
                           f"tokens. However, you requested {limit + 1} tokens"):
            direct.completions.create(model=MODEL, prompt=[1] * (limit - 2), max_tokens=3)
    assert 'hetserve:refused_total{status="400"} 2.0' in text
    assert list(got.values()) == [1.0] and all(o == "ok" for _, o in got)  # none at a backend
    lines = access_lines(caplog)
    assert [(line["outcome"], line.get("status"), line["backend"]) for line in lines[:2]] == [
        ("refused", 400, None), ("refused", 400, None)]
    assert lines[2]["outcome"] == "ok"


def test_every_name_the_engines_serve_reaches_the_model(plan):
    """The plan's engines serve the model's name and its Hugging Face id
    (--served-model-name): the gateway takes both, lists both as vLLM does, and the answer
    names the one asked for; a name no engine serves is vLLM's 404."""
    hf_id = plan.models[0].spec.hf_id
    assert plan.models[0].served_names == [MODEL, hf_id] == ["llama-3.1-8b",
                                                            "meta-llama/Llama-3.1-8B-Instruct"]
    assert "--served-model-name" in plan.groups[0].command
    with running(plan) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        r = c.completions.create(model=hf_id, prompt="a b c", max_tokens=2)
        assert r.model == hf_id and r.usage.prompt_tokens == 3
        chunks = list(c.chat.completions.create(
            model=hf_id, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
            stream=True))
        assert {ch.model for ch in chunks} == {hf_id}
        listed = c.models.list().data
        assert [(m.id, m.root, m.model_extra["max_model_len"]) for m in listed] == [
            (MODEL, hf_id, plan.models[0].context_limit),
            (hf_id, hf_id, plan.models[0].context_limit)]
        with pytest.raises(openai.NotFoundError, match="`Llama-3.1-8B` does not exist"):
            c.completions.create(model="Llama-3.1-8B", prompt="hi", max_tokens=2)
        got = counts(url)
    assert sum(v for (_, o), v in got.items() if o == "ok") == 2


@contextmanager
def fake_backend(handler):
    """`handler` as POST /v1/completions of a server on an ephemeral port of 127.0.0.1, on
    its own loop in a thread; yields its base URL."""
    from aiohttp import web

    app = web.Application()
    app.add_routes([web.post("/v1/completions", handler)])
    runner = web.AppRunner(app, shutdown_timeout=0.5)

    async def start():
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    with in_background(start, runner.cleanup) as url:
        yield url


@contextmanager
def hanging_backend(stream: bool):
    """An OpenAI endpoint that takes a request and then sends nothing (after one chunk of a
    stream, when `stream`) for 30 s."""
    from aiohttp import web

    async def hang(request):
        if not stream:
            await asyncio.sleep(30)
            return web.json_response({})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"index": 0, "text": "x"}]}\n\n')
        await asyncio.sleep(30)
        return resp

    with fake_backend(hang) as url:
        yield url


def test_a_backend_that_sends_nothing_times_out_as_a_timeout(plan, caplog):
    """A backend that took the request and sends nothing for the read timeout (0.5 s here) is a
    timeout, not unreachable: a 504 to the client (an error event mid-stream), and the request
    is not sent again. A whole answer (not streamed) comes only with its last token: it may
    also take twice its tokens' time within the SLO (TTFT, then TPOT a token)."""
    import logging

    slo = plan.models[0].slo
    whole = 0.5 + 2 * (slo.ttft + 4 * slo.tpot)  # max_tokens 4
    assert 4 < whole < 6

    with caplog.at_level(logging.INFO, logger="hetserve.gateway.access"), \
            hanging_backend(stream=False) as silent, hanging_backend(stream=True) as stalled:
        for backend, streamed in ((silent, False), (stalled, True)):
            gw = Gateway(plan, {g.id: [backend] for g in plan.groups}, health_interval=0,
                         read_timeout=0.5)
            with serving(gw) as url:
                body = json.dumps({"model": MODEL, "prompt": "a b", "max_tokens": 4,
                                   "stream": streamed}).encode()
                start = time.monotonic()
                if streamed:
                    with urllib.request.urlopen(urllib.request.Request(
                            url + "/v1/completions", data=body,
                            headers={"Content-Type": "application/json"}), timeout=30) as resp:
                        events = resp.read().decode().split("\n\n")
                    assert resp.status == 200
                    error = json.loads(events[1].removeprefix("data: "))["error"]
                    assert error["code"] == 504 and "sent nothing for 0.5 s" in error["message"]
                else:
                    status, got = post(url + "/v1/completions", body)
                    assert status == 504 and got["error"]["type"] == "GatewayTimeoutError"
                    assert f"sent nothing for {whole:.3g} s: timed out" in got["error"][
                        "message"]
                took = time.monotonic() - start
                assert (whole if not streamed else 0.5) <= took < (whole if not streamed
                                                                    else 0.5) + 3
                outcomes = {o: v for (_, o), v in counts(url).items()}
                assert outcomes == {"timeout": 1.0}  # one attempt, not retried
                assert all(r.down_until <= time.monotonic()  # not set aside as unreachable
                           for f in gw.fleets.values() for r in f.replicas)
    assert [line["outcome"] for line in access_lines(caplog)] == ["timeout", "timeout"]


@contextmanager
def serving(gateway: Gateway):
    """`gateway` on an ephemeral port of 127.0.0.1, on its own loop in a thread."""
    server = GatewayServer(gateway)
    with in_background(server.start, server.stop) as url:
        yield url


def test_a_burst_is_split_over_the_models_by_their_planned_rates():
    from hetserve.cli.run import split_burst

    assert split_burst(12, [2.0, 3.0]) == [5, 7]
    assert split_burst(150, [5.0, 2.0, 3.0]) == [75, 30, 45]
    assert split_burst(10, [100.0, 0.1]) == [9, 1]  # every model is exercised
    assert split_burst(1, [1.0, 3.0]) == [0, 1]
    assert sum(split_burst(7, [1.0, 1.0, 1.0])) == 7


def test_up_bursts_every_models_own_requests(run_cli, tmp_path):
    """A two-model plan: `up --burst` sends each model its share of the burst, from its own
    workload, and every model's group serves."""
    from hetserve.plan import ModelRequest

    path = tmp_path / "two.json"
    hetserve.make_plan([ModelRequest(MODEL, "azure-code", 2.0),
                        ModelRequest("mistral-7b", "azure-code", 3.0)], baselines=False,
                       catalog=load_catalog().only(["A10G", "H100-SXM"])).save(path)
    res = run_cli("up", path, "--emulate", "--port", "0", "--burst", "10")
    assert res.code == 0, res.summary()
    assert "sending 4 requests of llama-3.1-8b (azure-code)" in res.out
    assert "sending 6 requests of mistral-7b (azure-code)" in res.out
    rows = re.findall(r"│ (\S+) +│ +(\d+)/(\d+) │", res.out)
    assert rows == [(MODEL, "4", "4"), ("mistral-7b", "6", "6")]
    served_rows = re.findall(r"│ (\S+) +│ (g\d+) +│ +\d+ │ +\d+ │ +\d+ │ +(\d+) │", res.out)
    by_model: dict[str, int] = {}
    for model, _, n in served_rows:
        by_model[model] = by_model.get(model, 0) + int(n)
    assert by_model == {MODEL: 4, "mistral-7b": 6}


@contextmanager
def discovering(plan, spec, resolver, **options):
    """The gateway over `spec` with `resolver` (resolving again every 50 ms), and two emulated
    replicas of the plan's first group, on one loop in a thread: yields (gateway URL, gateway,
    the two replicas' URLs)."""
    emulator = group_emulator(plan, plan.groups[0], replicas=2)
    server = GatewayServer(Gateway(plan, spec, resolver=resolver, resolve_interval=0.05,
                                   health_interval=0, **options))

    async def start():
        return await emulator.start(), await server.start()

    async def stop():
        await server.stop()
        await emulator.stop()

    with in_background(start, stop) as (replicas, url):
        yield url, server.gateway, replicas


def wait_for(check, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_name_to_resolve_spreads_requests_over_every_address_it_resolves_to(plan, caplog):
    """Every group's backend is one name (`resolve: true`, a headless Service): it resolves to
    one emulated replica, then to two, and requests spread over both; a failed resolution or
    one that finds nothing keeps the last known addresses."""
    import logging

    answer: list = []
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int):
        asked.append((host, port))
        if isinstance(answer[0], Exception):
            raise answer[0]
        return answer[0]

    name = "http://pods.serving.svc.cluster.local:8000"
    spec = parse_backends({g.id: [{"url": name, "resolve": True}] for g in plan.groups}, plan,
                          "b.yaml")

    def port(u: str) -> int:
        return int(u.rsplit(":", 1)[1])

    seen = [0]  # access lines counted so far

    def served() -> dict[str, int]:
        """Requests each backend served since the last call."""
        lines = access_lines(caplog)
        out: dict[str, int] = {}
        for line in lines[seen[0]:]:
            out[line["backend"]] = out.get(line["backend"], 0) + 1
        seen[0] = len(lines)
        return out

    answer.append([])  # at startup no pod is ready: the name resolves to nothing
    with caplog.at_level(logging.INFO, logger="hetserve.gateway.access"), \
            caplog.at_level(logging.INFO, logger="hetserve.gateway.discovery"), \
            discovering(plan, spec, resolver, admin_token="adm") as (url, gateway, (a, b)):
        assert gateway.backends == {g.id: [name] for g in plan.groups}
        assert asked[0] == ("pods.serving.svc.cluster.local", 8000)
        answer[0] = [("127.0.0.1", port(a))]
        wait_for(lambda: gateway.backends[plan.groups[0].id] == [a])
        assert all(u == [a] for u in gateway.backends.values())
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        for _ in range(4):
            c.completions.create(model=MODEL, prompt="a b c", max_tokens=2)
        assert served() == {a: 4}
        kept = [r for f in gateway.fleets.values() for r in f.replicas]
        # the name now resolves to both replicas (duplicates and order do not matter)
        answer[0] = [("127.0.0.1", port(b)), ("127.0.0.1", port(a)), ("127.0.0.1", port(b))]
        wait_for(lambda: gateway.backends[plan.groups[0].id] == sorted([a, b], key=port))
        assert all(sorted(u) == sorted([a, b]) for u in gateway.backends.values())
        # the replica that stays is the same one (its load and health carry over)
        now = [r for f in gateway.fleets.values() for r in f.replicas]
        assert all(any(r is k for r in now) for k in kept) and len(now) == 2 * len(kept)
        for _ in range(8):
            c.completions.create(model=MODEL, prompt="a b c", max_tokens=2)
        got = served()
        assert set(got) == {a, b} and sum(got.values()) == 8
        metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
        assert f'hetserve:discovered_replicas{{group="{plan.groups[0].id}",model="{MODEL}"}} ' \
               '2.0' in metrics
        # the name fails to resolve, then resolves to nothing: the two addresses stay
        routed = dict(gateway.backends)
        for failure in (OSError(-2, "Name or service not known"), []):
            answer[0] = failure
            n = len(asked)
            wait_for(lambda n=n: len(asked) >= n + 3)  # a few rounds
            assert gateway.backends == routed
            c.completions.create(model=MODEL, prompt="a b c", max_tokens=2)
        assert served().keys() <= {a, b}
        # GET /admin/plan gives the name, not its addresses (what POST takes back)
        request = urllib.request.Request(url + "/admin/plan",
                                         headers={"Authorization": "Bearer adm"})
        now = json.loads(urllib.request.urlopen(request, timeout=10).read())
        assert now["backends"] == {g.id: [{"url": name, "resolve": True}] for g in plan.groups}
        status, body = post(url + "/admin/plan", json.dumps(now).encode(), "adm")
        assert status == 200 and body["groups"] == {g.id: 2 for g in plan.groups}
        assert gateway.backends == routed
    messages = [r.getMessage() for r in caplog.records if r.name == "hetserve.gateway.discovery"]
    assert any("Name or service not known" in m and "keeping its 2 last known addresses" in m
               for m in messages)
    assert any("routing to the URL itself until it resolves" in m for m in messages)
    assert any(m.endswith(f"1 replica (+127.0.0.1:{port(a)})") for m in messages)


def test_a_name_that_never_resolved_serves_as_its_own_url(plan):
    """A name that does not resolve at startup (no pod ready yet): the gateway starts anyway,
    the URL itself standing for its group, and a request there fails cleanly as unreachable."""
    async def resolver(host: str, port: int):
        raise OSError(-2, "Name or service not known")

    dead = f"http://127.0.0.1:{_closed_port()}"
    spec = parse_backends({g.id: [{"url": dead, "resolve": True}] for g in plan.groups}, plan,
                          "b.yaml")
    with discovering(plan, spec, resolver) as (url, gateway, _):
        assert gateway.backends == {g.id: [dead] for g in plan.groups}
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        with pytest.raises(openai.APIStatusError, match="no backend of .* served the request"):
            c.completions.create(model=MODEL, prompt="a b c", max_tokens=2)
        metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
        assert f'hetserve:discovered_replicas{{group="{plan.groups[0].id}",model="{MODEL}"}} ' \
               '0.0' in metrics
        assert sum(v for (_, o), v in counts(url).items() if o == "unreachable") >= 1


def test_a_kept_replica_brings_its_requests_in_flight_to_the_new_fleet(plan):
    """New addresses (or a new plan) keep the replicas that stay: the requests they hold count
    in the new fleet's load index, and finishing them there counts down in it."""
    first = {g.id: ["http://10.0.0.1:8000", "http://10.0.0.2:8000"] for g in plan.groups}
    old = Gateway._build(plan, first, 2.0)[0][MODEL]
    old.count(0, 1)
    old.count(0, 1)
    then = {g.id: ["http://10.0.0.1:8000", "http://10.0.0.3:8000"] for g in plan.groups}
    new = Gateway._build(plan, then, 2.0, {MODEL: old})[0][MODEL]
    assert new.replicas[0] is old.replicas[0] and new.index.load[0] == 2
    assert new.replicas[1] is not old.replicas[1] and new.replicas[1].in_flight == 0
    old.count(0, -1)  # a request sent before the change ends
    assert new.load(0, 0.0) == 1 and new.index.load[0] == 1
    assert new.index.least(0) == 1  # the idle new address first


def test_a_name_the_chosen_engine_does_not_serve_is_rewritten_to_one_it_does():
    """SGLang serves one name (--served-model-name takes one: the plan's), TensorRT-LLM the
    model it loads (the Hugging Face id): a request by the other name reaches the engine under
    one it answers to; a name it serves goes through as the client's own bytes."""
    from aiohttp import web

    from hetserve.plan.serving import engine_names

    names = ["llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct"]
    assert engine_names("vllm", names) == names
    assert engine_names("sglang", names) == names[:1]
    assert engine_names("trt-llm", names) == names[1:]
    plan = hetserve.make_plan(MODEL, workload="azure-conv", rate=1, baselines=False,
                              engine="sglang", catalog=load_catalog().only(["H100-SXM"]))
    (group,) = plan.groups
    assert group.engine == "sglang"
    at = group.command.index("--served-model-name")
    assert group.command[at + 1:at + 3] == [MODEL, "--host"]  # one name, the plan's
    seen: list[bytes] = []

    async def complete(request):
        seen.append(await request.read())
        return web.json_response({"id": "c", "object": "text_completion", "model": MODEL,
                                  "choices": [{"index": 0, "text": "x", "finish_reason": "length"}],
                                  "usage": {"prompt_tokens": 2, "completion_tokens": 1,
                                            "total_tokens": 3}})

    with fake_backend(complete) as backend:
        gw = Gateway(plan, {group.id: [backend]}, health_interval=0)
        with serving(gw) as url:
            sent = []
            for name in names:
                body = json.dumps({"model": name, "prompt": "a b", "max_tokens": 1}).encode()
                sent.append(body)
                status, _ = post(url + "/v1/completions", body)
                assert status == 200
    assert seen[0] == sent[0]  # the plan's name: the client's bytes
    assert json.loads(seen[1]) == {"model": MODEL, "prompt": "a b", "max_tokens": 1}


def test_a_slow_health_answer_is_tolerated_once_an_error_is_not(plan):
    """A loaded engine answers /health late: one timed-out check keeps the replica, two in a
    row eject it; a 200 brings it back; an error status ejects at once. A request that no
    replica can then take is refused with a 503 that counts the ejected replica."""
    from aiohttp import ClientSession, web

    health = {"delay": 0.0, "status": 200}

    async def main():
        async def answer(request):
            await asyncio.sleep(health["delay"])
            return web.Response(status=health["status"])

        app = web.Application()
        app.router.add_get("/health", answer)
        runner = web.AppRunner(app, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        backend = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        gw = Gateway(plan, {g.id: [backend] for g in plan.groups}, health_interval=0.05,
                     health_timeout=0.5)
        server = GatewayServer(gw)
        url = await server.start()
        replica, everyone = gw.fleets[MODEL].replicas[0], len(gw.fleets[MODEL].replicas)

        async def until(condition, seconds=10.0):
            deadline = time.monotonic() + seconds
            while not condition() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return condition()

        seen = []
        try:
            health["delay"] = 5.0  # every check times out from now on
            assert await until(lambda: replica.late >= 1)
            seen.append((replica.late, replica.healthy))  # one late answer: kept
            assert await until(lambda: not replica.healthy)
            seen.append((replica.late, replica.healthy))  # the second in a row: ejected
            assert await until(lambda: not any(r.healthy for r in gw.fleets[MODEL].replicas))
            body = {"model": MODEL, "prompt": "a b", "max_tokens": 1}
            async with ClientSession() as session, \
                    session.post(url + "/v1/completions", json=body) as resp:
                refused = (resp.status, (await resp.json())["error"]["message"])
            health["delay"] = 0.0
            assert await until(lambda: replica.healthy)
            seen.append((replica.late, replica.healthy))  # answers again: back
            health["status"] = 503
            assert await until(lambda: not replica.healthy)
            seen.append((replica.late, replica.healthy))  # an error: out at once, no timeout
        finally:
            await server.stop()
            await runner.cleanup()
        return seen, refused, everyone

    seen, (status, message), everyone = asyncio.run(main())
    assert seen == [(1, True), (2, False), (0, True), (0, False)]
    assert status == 503 and f"{everyone} failing their health check" in message, message


def test_health_of_replicas_gone_during_a_probe_or_before_names_resolve_is_not_reported(plan):
    """A probe in flight when its replica leaves (a new plan, or a pod out of the DNS answer)
    reports nothing; and the first health round runs after the names resolve, so the name's
    own URL (standing in until it resolves) never shows as a replica."""
    from aiohttp import web

    async def main():
        async def health(request):
            await asyncio.sleep(0.3)
            return web.Response(status=200)

        app = web.Application()
        app.router.add_get("/health", health)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        a, name = f"http://127.0.0.1:{port}", f"http://localhost:{port}"

        async def resolver(host, p):
            return [("127.0.0.1", p)]

        def series(gw):
            return sorted((s.labels["group"], s.labels["backend"], s.value)
                          for m in gw.registry.collect() if m.name == "hetserve:replica_healthy"
                          for s in m.samples)

        spec = parse_backends({g.id: [{"url": name, "resolve": True}] for g in plan.groups},
                              plan, "b")
        gw = Gateway(plan, spec, resolver=resolver, health_interval=5, resolve_interval=0)
        await gw._open(None)
        await asyncio.sleep(0.6)
        named = series(gw)
        await gw._close(None)
        gw = Gateway(plan, {g.id: [a] for g in plan.groups}, health_interval=0.2,
                     resolve_interval=0)
        await gw._open(None)
        await asyncio.sleep(0.1)  # a probe of `a` in flight
        gw._install(plan, {g.id: [name] for g in plan.groups})  # `a` leaves
        await asyncio.sleep(1.0)
        moved = series(gw)
        await gw._close(None)
        await runner.cleanup()
        return a, name, named, moved

    a, name, named, moved = asyncio.run(main())
    assert named == [(g.id, a, 1.0) for g in plan.groups]  # the resolved address, not `name`
    assert moved == [(g.id, name, 1.0) for g in plan.groups]  # nothing left for `a`


def test_a_slow_lookup_is_awaited_again_not_started_again(plan, monkeypatch):
    """A lookup that outlives the resolve timeout (a DNS outage) is not started anew each
    round: one per name at most, so lookups never pile up in the shared thread pool."""
    import hetserve.gateway.server as server

    monkeypatch.setattr(server, "RESOLVE_TIMEOUT", 0.05)
    calls = []

    async def slow(host, port):
        calls.append(host)
        await asyncio.sleep(0.3)
        return [("127.0.0.1", port)]

    async def main():
        spec = parse_backends({g.id: [{"url": "http://pods:8000", "resolve": True}]
                               for g in plan.groups}, plan, "b")
        gw = Gateway(plan, spec, resolver=slow, health_interval=0, resolve_interval=0)
        (entry,) = names(spec)
        first = await gw._lookup(entry)  # times out, the lookup goes on
        again = await gw._lookup(entry)  # the same lookup, awaited again
        await asyncio.sleep(0.3)
        done = await gw._lookup(entry)  # finished meanwhile: its answer
        return first, again, done

    first, again, done = asyncio.run(main())
    assert first[0] == [] and again[0] == [] and "no answer from the resolver" in first[1]
    assert done == ([("127.0.0.1", 8000)], "") and calls == ["pods"]
