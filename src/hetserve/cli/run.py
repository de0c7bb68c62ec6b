"""Command line, running half: serve emulated engines (and, later, the gateway)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

from hetserve.errors import HetserveError, positive
from hetserve.route.request import WORDS, PromptCounter

MAX_REPLICAS = 256  # one process, one event loop: enough for a plan on a laptop
TOKENIZER_HELP = ("[MODEL=]FILE: count MODEL's prompts with this tokenizer.json (Hugging Face "
                  "tokenizers; read locally); without MODEL= for every model of the plan; "
                  "repeatable. Default: one token per word")


def tokenizers(values: list[str] | None, plan) -> dict:
    """--tokenizer values -> {model name: PromptCounter}, each file read once."""
    names = [e.name for e in plan.models]
    counters = {}
    for value in values or []:
        model, sep, path = value.rpartition("=")
        if sep and model not in names:
            raise HetserveError(f"--tokenizer {value}: the plan has no model {model!r} "
                                f"(it has {', '.join(names)})")
        counter = PromptCounter.from_file(path)
        counters.update({m: counter for m in ([model] if sep else names)})
    return counters


def emulate_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="bundled name or config.json")],
    accelerator: Annotated[str, typer.Option("--accelerator", "-a", help="catalog name")],
    tp: Annotated[int, typer.Option("--tp", help="tensor-parallel degree")] = 1,
    pp: Annotated[int, typer.Option("--pp", help="pipeline-parallel degree")] = 1,
    dtype: Annotated[str | None, typer.Option("--dtype", help="weight dtype")] = None,
    engine: Annotated[str, typer.Option(
        "--engine", help="vllm, vllm-v0, sglang or trt-llm (host overhead per sequence)")]
    = "vllm",
    chunk: Annotated[int, typer.Option(
        "--max-num-batched-tokens", help="token budget of a step")] = 8192,
    max_seqs: Annotated[int, typer.Option("--max-num-seqs", help="sequences per step")] = 256,
    replicas: Annotated[int, typer.Option(
        "--replicas", help="replicas in this process, one port each")] = 1,
    port: Annotated[int, typer.Option(
        "--port", help="first replica's port (the others follow); 0: any free port")] = 8000,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    catalog: Annotated[Path | None, typer.Option(
        "--catalog", help="YAML file extending/overriding the catalog")] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        "--tokenizer", help="the model's tokenizer.json: count prompts with it (default: one "
        "token per word)")] = None,
) -> None:
    """Serve an emulated engine (the simulator's engine in real time) behind the OpenAI API:
    /v1/completions, /v1/chat/completions, /v1/models, /health, /metrics."""
    from hetserve.catalog import load_catalog
    from hetserve.emulate import Emulator

    positive(replicas, "--replicas", integer=True)
    if replicas > MAX_REPLICAS:
        raise HetserveError(f"--replicas: at most {MAX_REPLICAS} in one process, got {replicas}")
    if not 0 <= port <= 65535 or (port and port + replicas - 1 > 65535):
        raise HetserveError(f"--port: expected 0..65535 (with room for {replicas} replicas), "
                            f"got {port}")
    dep = deployment_from_options(model, load_catalog(catalog).get(accelerator), tp, pp, dtype,
                                  engine, max_seqs, chunk)
    ports = [port + k if port else 0 for k in range(replicas)]
    counter = PromptCounter.from_file(tokenizer) if tokenizer is not None else WORDS
    asyncio.run(_serve(Emulator(dep, dep.model.name, replicas, host, ports, counter=counter),
                       dep.label))


def deployment_from_options(model: str, accelerator, tp: int, pp: int, dtype: str | None,
                            engine: str, max_seqs: int, chunk: int):
    """The Deployment that --model/--tp/--pp/--dtype/--engine/--max-num-seqs/
    --max-num-batched-tokens name on `accelerator`, each option checked, and refused in one
    line when it does not fit."""
    from hetserve.models import check_dtype, get_model
    from hetserve.perf import Deployment
    from hetserve.perf.model import TP_DEGREES, check_engine

    check_dtype(dtype)
    check_engine(engine)
    for value, option in ((tp, "--tp"), (pp, "--pp"), (max_seqs, "--max-num-seqs"),
                          (chunk, "--max-num-batched-tokens")):
        positive(value, option, integer=True)
    if tp not in TP_DEGREES:
        raise HetserveError(f"--tp: TP must be 1, 2, 4 or 8, got {tp}")
    dep = Deployment(get_model(model), accelerator, tp=tp, pp=pp, dtype=dtype, engine=engine,
                     max_seqs=max_seqs, chunk_tokens=chunk)
    if not dep.fits:
        raise HetserveError(f"{dep.label}: {dep.why_not()}")
    return dep


async def _serve(emulator, label: str) -> None:
    try:
        urls = await emulator.start()
    except OSError as exc:
        await emulator.stop()
        raise HetserveError(f"--host/--port: cannot listen ({exc.strerror or exc})") from None
    for k, url in enumerate(urls):
        print(f"replica {k}: {url} ({label})", flush=True)
    sys.stdout.flush()
    try:
        await asyncio.Event().wait()  # until interrupted
    finally:
        await emulator.stop()


def serve_cmd(
    plan_file: Annotated[Path, typer.Argument(help="plan file (hetserve plan --out)")],
    backends: Annotated[Path | None, typer.Option(
        "--backends", help="YAML: replica group id -> list of endpoint URLs")] = None,
    emulate: Annotated[bool, typer.Option(
        "--emulate", help="start an emulated engine for every replica of the plan instead "
        "of --backends")] = False,
    port: Annotated[int, typer.Option("--port", help="gateway port; 0: any free port")] = 8080,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    api_key: Annotated[list[str] | None, typer.Option(
        "--api-key", help="a key clients must send as 'Authorization: Bearer KEY' "
        "(repeatable; none: open)")] = None,
    admin_token: Annotated[str | None, typer.Option(
        "--admin-token", help="Bearer token of POST /admin/plan (none: /admin is off)")] = None,
    access_log: Annotated[bool, typer.Option(
        "--access-log/--no-access-log", help="one JSON line per request on stderr (no prompt "
        "or completion text)")] = True,
    tokenizer: Annotated[list[str] | None, typer.Option(
        "--tokenizer", help=TOKENIZER_HELP)] = None,
) -> None:
    """Route live OpenAI traffic by a plan: an OpenAI-compatible gateway in front of the plan's
    engines (--backends), or of emulated ones started here (--emulate)."""
    from hetserve.gateway import Gateway, GatewayServer, load_backends
    from hetserve.plan import load_plan

    plan = load_plan(plan_file)
    if (backends is None) == (not emulate):
        raise HetserveError("hetserve serve: give --backends FILE or --emulate (one of them)")
    if not 0 <= port <= 65535:
        raise HetserveError(f"--port: expected 0..65535, got {port}")
    for key in [*(api_key or []), *([admin_token] if admin_token is not None else [])]:
        if not key.strip() or any(c.isspace() for c in key):
            raise HetserveError("--api-key/--admin-token: expected a token without spaces")
    urls = load_backends(backends, plan) if backends is not None else None
    counters = tokenizers(tokenizer, plan)
    if access_log:
        _log_json_lines()
    _log_lines("hetserve.gateway.discovery")  # the addresses of `resolve: true` names
    asyncio.run(_gateway(plan, urls, host, port, lambda u: Gateway(
        plan, u, api_key or (), admin_token, counters=counters), GatewayServer,
        counters=counters))


async def _gateway(plan, urls, host: str, port: int, make_gateway, server_cls,
                   then=None, counters=None) -> None:
    """Start emulators (when `urls` is None; they count prompts by `counters`, model ->
    PromptCounter, as the gateway does) and the gateway; then run `then(url, gateway)`
    (default: wait until interrupted) and stop everything."""
    from hetserve.emulate import group_emulator

    emulators = []
    try:
        if urls is None:
            urls = {}
            for g in plan.groups:
                emu = group_emulator(plan, g, host, (counters or {}).get(g.model, WORDS))
                emulators.append(emu)
                try:
                    urls[g.id] = await emu.start()
                except OSError as exc:
                    raise HetserveError(f"--host {host}: cannot listen for the emulated "
                                        f"replicas ({exc.strerror or exc})") from None
                for url in urls[g.id]:
                    print(f"emulated {g.id} ({plan.deployment(g).label}): {url}", flush=True)
        gateway = make_gateway(urls)
        server = server_cls(gateway, host, port)
        try:
            url = await server.start()
        except OSError as exc:
            raise HetserveError(f"--host {host} --port {port}: cannot listen "
                                f"({exc.strerror or exc})") from None
        routed = getattr(gateway, "backends", urls)  # the gateway's: names resolved
        print(f"gateway: {url}/v1 ({sum(len(u) for u in routed.values())} replicas in "
              f"{len(routed)} groups)", flush=True)
        try:
            if then is None:
                await asyncio.Event().wait()  # until interrupted
            else:
                await then(url, gateway)
        finally:
            await server.stop()
    finally:
        for emu in emulators:
            await emu.stop()


def _log_json_lines() -> None:
    _log_lines("hetserve.gateway.access")


def _log_lines(name: str) -> None:
    """The logger's INFO and above on stderr, one message a line."""
    import logging

    log = logging.getLogger(name)
    if any(getattr(h, "hetserve_lines", False) for h in log.handlers):
        return  # set up already (serve called twice in one process)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.hetserve_lines = True
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def up_cmd(
    plan_file: Annotated[Path, typer.Argument(help="plan file (hetserve plan --out)")],
    emulate: Annotated[bool, typer.Option(
        "--emulate", help="emulate every replica of the plan here (needed for now; real "
        "engines: hetserve serve --backends)")] = False,
    port: Annotated[int, typer.Option("--port", help="gateway port; 0: any free port")] = 8080,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    api_key: Annotated[str | None, typer.Option(
        "--api-key", help="a key clients must send as 'Authorization: Bearer KEY'")] = None,
    burst: Annotated[int | None, typer.Option(
        "--burst", help="send this many requests of the plan's workloads through the gateway, "
        "split over its models by their planned rates, each model's at its own rate; print "
        "what they got, and stop")] = None,
    tokenizer: Annotated[list[str] | None, typer.Option(
        "--tokenizer", help=TOKENIZER_HELP)] = None,
) -> None:
    """Run a plan on this machine: an emulated engine for every replica, the gateway in front,
    a live table of requests per group (Ctrl-C stops it), or a burst of the plan's workload."""
    from hetserve.gateway import Gateway, GatewayServer
    from hetserve.plan import load_plan

    plan = load_plan(plan_file)
    if not emulate:
        raise HetserveError("hetserve up: only --emulate for now; in front of real engines "
                            "run hetserve serve PLAN --backends FILE")
    if burst is not None:
        positive(burst, "--burst", integer=True)
    if not 0 <= port <= 65535:
        raise HetserveError(f"--port: expected 0..65535, got {port}")
    keys = [api_key] if api_key else []
    counters = tokenizers(tokenizer, plan)

    async def then(url: str, gateway) -> None:
        model = plan.models[0].name
        auth = f" -H 'Authorization: Bearer {api_key}'" if api_key else ""
        print(f"try: curl {url}/v1/completions -H 'Content-Type: application/json'{auth} "
              f"-d '{{\"model\": \"{model}\", \"prompt\": \"Hello\", \"max_tokens\": 8}}'",
              flush=True)
        if burst is None:
            await _live(gateway)
        else:
            await _burst(plan, url, burst, api_key)
            from rich.console import Console

            Console(width=160).print(_status(gateway, "after the burst"))

    asyncio.run(_gateway(plan, None, host, port, lambda u: Gateway(
        plan, u, keys, counters=counters), GatewayServer, then, counters))


async def _live(gateway) -> None:
    from rich.live import Live

    with Live(_status(gateway), refresh_per_second=2) as live:
        while True:
            await asyncio.sleep(0.5)
            live.update(_status(gateway))


def _status(gateway, when: str = "Ctrl-C stops"):
    from rich.table import Table

    table = Table(title=f"hetserve up: requests per replica group ({when})",
                  title_justify="left")
    for col in ("model", "group", "replicas", "in flight", "prompt tokens waiting", "served",
                "share", "planned"):
        table.add_column(col, justify="left" if col in ("model", "group") else "right")
    for model, fleet in gateway.fleets.items():
        served = gateway.served.get(model, {})
        total = sum(served.values()) or 1
        groups = [g for g in gateway.plan.groups if g.model == model]  # fleet.group_ids order
        for j, g in enumerate(groups):
            reps = [fleet.replicas[i] for i in fleet.groups[j]]
            table.add_row(model, g.id, str(len(reps)), str(sum(r.in_flight for r in reps)),
                          str(sum(r.waiting_tokens for r in reps)), str(served.get(g.id, 0)),
                          f"{served.get(g.id, 0) / total:.1%}",
                          f"{gateway.plan.planned_share(g):.1%}")
    return table


def split_burst(n: int, rates: list[float]) -> list[int]:
    """`n` requests split over models in proportion to their planned `rates` (largest
    remainders; every model gets one while n allows, so each is exercised)."""
    total = sum(rates)
    exact = [n * r / total for r in rates]
    counts = [int(x) for x in exact]
    for k in sorted(range(len(rates)), key=lambda k: counts[k] - exact[k])[:n - sum(counts)]:
        counts[k] += 1
    for k in range(len(rates)):  # a model too slow for a share of its own borrows one
        if counts[k] == 0 and n >= len(rates):
            counts[k] = 1
            counts[max(range(len(rates)), key=lambda j: counts[j])] -= 1
    return counts


async def _burst(plan, url: str, n: int, api_key: str | None) -> None:
    """`n` requests of the plan's workload through the gateway at the plan's rates: split over
    the models by their planned rates (split_burst), each model's from its own workload's trace
    at its own rate, all at once; one row per model."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from hetserve.gateway.load import replay
    from hetserve.workload import load_trace

    entries = plan.models
    counts = split_burst(n, [e.rate for e in entries])
    sends = []
    for entry, k in zip(entries, counts, strict=True):
        trace = load_trace(entry.workload).for_model(entry.name, entry.spec.matches)
        trace = trace.scaled_to_rate(entry.rate * plan.scale)
        k = min(k, len(trace))
        arrivals = (trace.arrivals[:k] - trace.arrivals[0]).tolist() if k else []
        print(f"sending {k} requests of {entry.name} ({entry.workload}) at "
              f"{entry.rate * plan.scale:.3g} req/s ({arrivals[-1] if k else 0:.0f} s)...",
              flush=True)
        sends.append(replay(url.rsplit("/v1", 1)[0], entry.name, arrivals,
                            trace.input_tokens[:k].tolist(), trace.output_tokens[:k].tolist(),
                            api_key, max_model_len=entry.context_limit))
    results = await asyncio.gather(*sends)
    sent = sum(len(got) for got in results)
    table = Table(title=f"{sent} requests through the gateway", title_justify="left",
                  caption="in SLO = " + "; ".join(
                      f"{e.name}: TTFT <= {e.slo.ttft:g}s and TPOT <= {e.slo.tpot * 1e3:g}ms"
                      for e in entries), caption_justify="left")
    for col in ("model", "completed", "in SLO", "TTFT s p50/90/99", "TPOT ms p50/90/99"):
        table.add_column(col, justify="left" if col == "model" else "right")
    q = (50, 90, 99)
    for entry, got in zip(entries, results, strict=True):
        ok = np.array([r.ok for r in got], dtype=bool)
        ttft = np.array([r.ttft for r in got])
        tpot = np.array([r.tpot for r in got])
        met = ok & (ttft <= entry.slo.ttft) & (tpot <= entry.slo.tpot)
        table.add_row(entry.name, f"{int(ok.sum())}/{len(got)}",
                      f"{met.mean():.1%}" if len(got) else "-",
                      "/".join(f"{np.percentile(ttft[ok], p):.2f}" for p in q)
                      if ok.any() else "-",
                      "/".join(f"{np.percentile(tpot[ok], p) * 1e3:.0f}" for p in q)
                      if ok.any() else "-")
    Console(width=160).print(table)
