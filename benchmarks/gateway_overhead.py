"""What the gateway adds to a request: latency at low load and the highest rate it sustains.

Three paths, measured in one run with the same request stream, each server in a process of its
own (aiohttp on this machine's cores; the load generator is a fourth process):

- direct: straight to a zero-latency backend (a canned completion, or 64 SSE chunks);
- bare proxy: an aiohttp pass-through on the same stack (no parsing, routing or metrics), the
  floor for any proxy;
- gateway: `hetserve.gateway.Gateway` on a one-group plan whose replicas are all that backend
  (parses the body, counts the prompt, routes by the plan, counts metrics, pipes streams).

To choose the stack by measurement, the bare proxy and the gateway also run on uvloop (the same
aiohttp code on libuv's event loop), and a bare pass-through runs as a raw ASGI app under
uvicorn with uvloop and httptools (the other common stack; its client is aiohttp's).

Low load: LOW_REQUESTS requests one at a time: added latency p50/p99 over direct. Peak:
CONCURRENCY clients back to back for PEAK_SECONDS: requests/s. Then PACED_SECONDS of requests at
half the gateway's peak rate (open loop): p99 latency. Peak and paced are the medians of REPEATS
runs each (every paced run's p99 is in the JSON). Every server freezes its start-up heap out of
the garbage collector (as the gateway does), and the load generator's collector is off inside
each measurement window: its full collections stalled all requests in flight by 13-19 ms once a
run, the same on every path. Non-streaming and streaming (64 tokens).

Usage: python benchmarks/gateway_overhead.py [--quick]   (writes results/gateway_overhead.json)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import platform
import socket
import time
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web

RESULTS = Path(__file__).parent / "results" / "gateway_overhead.json"
LOW_REQUESTS = 1000
CONCURRENCY = 64
PEAK_SECONDS = 3.0
PACED_SECONDS = 3.0
REPEATS = 5  # peak and paced runs per path: the median is quoted
BACKLOG = 2048  # every server's listen backlog, as the gateway's (uvicorn's default)
STREAM_TOKENS = 64
MODEL = "llama-3.1-8b"
BODY = {"model": MODEL, "prompt": "the quick brown fox " * 25, "max_tokens": STREAM_TOKENS}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- servers (each runs in its own process) ----------------------------------------------

def _settle() -> None:
    """What every server does before it serves, as the gateway does itself: move the heap
    built at start-up out of the collector's way (gc.freeze), so that a full collection walks
    only what serving allocates."""
    gc.collect()
    gc.freeze()


def run_backend(port: int) -> None:
    completion = json.dumps({"id": "cmpl-0", "object": "text_completion", "created": 0,
                             "model": MODEL, "choices": [{"index": 0, "text": " x" * 8,
                                                          "finish_reason": "length"}],
                             "usage": {"prompt_tokens": 100, "completion_tokens": 8,
                                       "total_tokens": 108}}).encode()
    chunk = b'data: {"id":"cmpl-0","object":"text_completion","choices":[{"index":0,' \
            b'"text":" x","finish_reason":null}]}\n\n'

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=completion, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(STREAM_TOKENS):
            await resp.write(chunk)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def health(request: web.Request) -> web.Response:  # the gateway checks it
        return web.Response()

    app = web.Application()
    app.add_routes([web.post("/v1/completions", handle), web.get("/health", health)])
    _settle()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                backlog=BACKLOG)


def _use_uvloop() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # run_app's new loop is uvloop's


def run_bare_proxy(port: int, backend: str, uvloop: bool = False) -> None:
    if uvloop:
        _use_uvloop()

    async def start(app):
        app["session"] = aiohttp.ClientSession()

    async def stop(app):
        await app["session"].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        data = await request.read()
        async with request.app["session"].post(backend + request.path, data=data,
                                               headers={"Content-Type": "application/json"}
                                               ) as up:
            resp = web.StreamResponse(status=up.status, headers={
                "Content-Type": up.headers.get("Content-Type", "application/json")})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.add_routes([web.post("/v1/completions", handle)])
    _settle()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                backlog=BACKLOG)


def run_bare_asgi(port: int, backend: str) -> None:
    """The bare pass-through as a raw ASGI app under uvicorn (uvloop, httptools)."""
    import uvicorn

    session: aiohttp.ClientSession | None = None

    async def app(scope, receive, send):
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    session = aiohttp.ClientSession()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        data = b""
        while True:
            message = await receive()
            data += message.get("body", b"")
            if not message.get("more_body"):
                break
        async with session.post(backend + scope["path"], data=data,
                                headers={"Content-Type": "application/json"}) as up:
            kind = up.headers.get("Content-Type", "application/json").encode()
            await send({"type": "http.response.start", "status": up.status,
                        "headers": [(b"content-type", kind)]})
            async for chunk in up.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    _settle()
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                lifespan="on", log_level="warning", access_log=False, backlog=BACKLOG)


def run_gateway(port: int, backend: str, replicas: int, uvloop: bool = False) -> None:
    if uvloop:
        _use_uvloop()
    import hetserve
    from hetserve.catalog import load_catalog
    from hetserve.gateway import Gateway

    plan = hetserve.make_plan(MODEL, workload="azure-code", rate=2, baselines=False,
                              catalog=load_catalog().only(["L4"]))
    urls = {g.id: [backend] * max(g.replicas, replicas) for g in plan.groups}
    _settle()
    web.run_app(Gateway(plan, urls).app, host="127.0.0.1", port=port, access_log=None,
                print=None, handler_cancellation=True, backlog=BACKLOG)


# ---- load ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _timed():
    """A measurement window: the load generator's collector stays off inside it (a full
    collection of its own heap stalled every in-flight request by 13-19 ms, once per run, and
    decided the paced p99 of every path alike), and runs between windows."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _one(session: aiohttp.ClientSession, url: str, body: dict) -> float:
    start = time.perf_counter()
    async with session.post(url, json=body) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}")
    return time.perf_counter() - start


async def low_load(url: str, body: dict, n: int) -> np.ndarray:
    async with aiohttp.ClientSession() as session:
        for _ in range(20):  # warm the connections
            await _one(session, url, body)
        return np.array([await _one(session, url, body) for _ in range(n)])


async def peak(url: str, body: dict, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def client(session):
        nonlocal done
        while time.perf_counter() < stop:
            await _one(session, url, body)
            done += 1

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(CONCURRENCY)))
        return done / (time.perf_counter() - start)


async def paced(url: str, body: dict, rate: float, seconds: float) -> np.ndarray:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        start = time.perf_counter()
        k = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + k / rate
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.create_task(_one(session, url, body)))
            k += 1
        return np.array(await asyncio.gather(*tasks))


def _measure(run):
    with _timed():
        return asyncio.run(run)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _wait(port: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests, shorter runs")
    args = ap.parse_args()
    low_n, peak_s, paced_s = (200, 2.0, 2.0) if args.quick else \
        (LOW_REQUESTS, PEAK_SECONDS, PACED_SECONDS)
    servers = {  # path -> (process target, its arguments after port and backend)
        "direct": (run_backend, ()),
        "bare proxy": (run_bare_proxy, ()),
        "bare/uvloop": (run_bare_proxy, (True,)),
        "bare/uvicorn": (run_bare_asgi, ()),
        "gateway": (run_gateway, (4,)),
        "gateway/uvloop": (run_gateway, (4, True)),
    }
    ports = {name: _free_port() for name in servers}
    backend = f"http://127.0.0.1:{ports['direct']}"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=(ports[name],) + ((backend,) if name != "direct"
                                                                 else ()) + extra, daemon=True)
             for name, (target, extra) in servers.items()]
    for p in procs:
        p.start()
    try:
        for port in ports.values():
            _wait(port)
        rows = []
        for stream in (False, True):
            body = {**BODY, "stream": stream}
            base = None
            results = {}
            for name, port in ports.items():
                url = f"http://127.0.0.1:{port}/v1/completions"
                with _timed():
                    lat = asyncio.run(low_load(url, body, low_n))
                rps = float(np.median([_measure(peak(url, body, peak_s))
                                       for _ in range(REPEATS)]))
                results[name] = (lat, rps, url)
                if base is None:
                    base = lat
            half = results["gateway"][1] / 2
            for name, (lat, rps, url) in results.items():
                tails = [float(np.quantile(_measure(paced(url, body, half, paced_s)), 0.99)
                               * 1e3) for _ in range(REPEATS)]
                row = {
                    "path": name, "stream": stream, "p50_ms": float(np.median(lat) * 1e3),
                    "p99_ms": float(np.quantile(lat, 0.99) * 1e3),
                    "added_p50_ms": float((np.median(lat) - np.median(base)) * 1e3),
                    "added_p99_ms": float((np.quantile(lat, 0.99) - np.quantile(base, 0.99))
                                          * 1e3),
                    "peak_rps": rps, "paced_rps": half,
                    "paced_p99_ms": float(np.median(tails)), "paced_p99_runs_ms": tails}
                rows.append(row)
                print(f"{'stream ' if stream else 'plain  '} {name:14s}  p50 "
                      f"{row['p50_ms']:6.2f} ms (+{row['added_p50_ms']:5.2f})  p99 "
                      f"{row['p99_ms']:6.2f} ms  peak {rps:7,.0f} req/s  p99 at "
                      f"{half:,.0f} req/s: {row['paced_p99_ms']:6.2f} ms", flush=True)
            bare = next(r for r in rows if r["path"] == "bare proxy" and r["stream"] == stream)
            gw = next(r for r in rows if r["path"] == "gateway" and r["stream"] == stream)
            print(f"        gateway vs bare proxy: {gw['peak_rps'] / bare['peak_rps']:.0%} of "
                  f"its throughput (target >= 70%), +{gw['p50_ms'] - bare['p50_ms']:.2f} ms "
                  f"p50 (target <= 0.3), p99 {gw['paced_p99_ms']:.2f} ms at half its peak "
                  f"(target < 3)", flush=True)
            same = {r["path"]: r for r in rows if r["stream"] == stream}
            print("        stacks, bare pass-through peak: aiohttp {:,.0f}, aiohttp+uvloop {:,.0f}"
                  ", uvicorn+uvloop {:,.0f} req/s; gateway on aiohttp {:,.0f}, on aiohttp+uvloop "
                  "{:,.0f} req/s".format(*(same[k]["peak_rps"] for k in (
                      "bare proxy", "bare/uvloop", "bare/uvicorn", "gateway", "gateway/uvloop"))),
                  flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.join(5)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({
            "rows": rows, "low_requests": low_n, "concurrency": CONCURRENCY,
            "peak_seconds": peak_s, "paced_seconds": paced_s, "stream_tokens": STREAM_TOKENS,
            "stack": f"aiohttp {aiohttp.__version__} (server and client); compared: uvloop "
                     f"{_version('uvloop')}, uvicorn {_version('uvicorn')} (httptools "
                     f"{_version('httptools')})",
            "machine": platform.platform(), "cores": multiprocessing.cpu_count(),
            "python": platform.python_version(), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": "python benchmarks/gateway_overhead.py"}, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
