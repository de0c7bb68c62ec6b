"""An OpenAI-compatible gateway that routes each request by the plan (hetserve.route).

For every request it reads the routing view (prompt tokens, `max_tokens`; route.request), asks
the model's PlanRouter for a replica, and proxies the request there: streamed responses are
piped chunk by chunk, the first chunk marking the request's first token; other responses are
returned whole (their first token counts at the end, which overstates the replica's queued
prefill a little). The router sees, per replica, the requests in flight and the prompt tokens
still waiting for a first token.

Before routing, a request the engines would refuse is refused here (400, vLLM's body): one whose
model is none of the names the plan's engines serve (404), and one whose prompt, or prompt +
max_tokens, exceeds the model's max_model_len (route.request.check_context). Such refusals are
the client's errors: counted in hetserve:refused by status and logged with outcome "refused",
never against a backend.

Failures: while nothing has reached the client, a backend that fails (refused connection,
dropped connection, a 5xx) is left for the router's next pick, up to every replica; one that
failed at the connection is set aside for DOWN_SECONDS, and every HEALTH_INTERVAL each
replica's /health is checked: one that refuses or answers an error is ejected until it
answers again, one that times out HEALTH_TIMEOUTS times in a row too (a loaded engine answers
late). A stream that
breaks after its first bytes ends with an error event (`data: {"error": ...}`, as vLLM sends
one). When no replica serves the request the client gets a 502 naming the last failure. A
backend that sends nothing for READ_TIMEOUT seconds has timed out (outcome "timeout", not
"unreachable": it answered the connection): the client gets a 504 and the request is not sent
again (it may still be running there, and the health checks tell a hung engine). A
replica holding QUEUE_FACTOR x max_num_seqs requests takes no more; when the plan's groups for
a request are that full the router spills it to another group, and when every replica is, the
client gets a 503 with Retry-After. Nothing is dropped silently:
every attempt is counted per model, group and outcome in `/metrics`, with TTFT and time per
output token per group and routing key (the request's class as a gateway sees it: prompt
range, and `/out<N` when its max_tokens rules out longer outputs), and the share of requests
each group served beside the plan's share; with the `hetserve.gateway.access` logger at INFO,
every attempt is also one JSON line (model, group, backend, key, prompt and max tokens,
outcome, seconds, TTFT; never a prompt's or a completion's text).

Discovery: a backends entry `{url: http://NAME:PORT, resolve: true}` (a Kubernetes headless
Service, which lists its ready pods) is one replica per address NAME resolves to. The names are
resolved before the gateway listens and every RESOLVE_SECONDS; when a group's addresses change
the plan is installed again over them (requests in flight finish where they were sent; a
replica whose address stays is kept, with its requests in flight, health and time set aside).
A name that fails to resolve, or resolves to nothing, keeps its last known addresses; one that
never resolved stands for one replica itself (requests to it fail as unreachable).
`hetserve:discovered_replicas` counts each group's addresses, and the changes are logged
(`hetserve.gateway.discovery`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from hetserve.errors import HetserveError
from hetserve.gateway.backends import (
    Address,
    Backends,
    Resolve,
    addresses,
    expand,
    names,
    parse_backends,
    resolve,
    to_json,
)
from hetserve.perf import Deployment
from hetserve.plan.planfile import ModelEntry, Plan, parse_plan
from hetserve.plan.serving import engine_names
from hetserve.route import PlanRouter, RoutingTable
from hetserve.route.loads import LoadIndex
from hetserve.route.request import (
    MAX_BODY,
    WORDS,
    BadRequest,
    PromptCounter,
    RouteRequest,
    check_context,
    error_body,
    openai_routes,
    route_request,
)

DOWN_SECONDS = 5.0  # a backend that refused a connection is not chosen again for this long
# A replica takes at most QUEUE_FACTOR x max_num_seqs requests in flight (its running batch and
# as many waiting); when every replica that could serve a request is that full, the request is
# answered 503 with Retry-After (seconds) instead of queueing without bound
QUEUE_FACTOR = 2.0
# Connections the kernel queues before the gateway accepts them. aiohttp's default, 128,
# overflowed under a burst of new client connections (gateway_overhead.py, paced): the SYNs
# were dropped and retried after 1, 3 and 7 s, a 7 s p99. uvicorn's default is 2048.
BACKLOG = 2048
# bodies larger than this (bytes) are tokenised off the event loop
TOKENIZE_INLINE = 64 * 1024
RETRY_AFTER = 1
RETRY_COOLDOWN = 1.0  # a backend that answered 5xx is not chosen again for this long
READ_TIMEOUT = 300.0  # s without a byte from a backend: it has failed (a hung engine);
# a whole (not streamed) answer may take longer: quiet_limit
CONNECT_SECONDS = 10.0
HEALTH_INTERVAL = 5.0  # s between checks of every replica's /health
HEALTH_TIMEOUT = 2.0
# consecutive /health timeouts that eject a replica: a busy engine answers late (its API server
# shares a loop with token streaming), and ejecting the busiest replicas would pile their load
# on the rest; a refused connection or an error status ejects at once
HEALTH_TIMEOUTS = 2
# s between resolutions of the backends' `resolve: true` names (a headless Service's ready pods)
RESOLVE_SECONDS = 5.0
RESOLVE_TIMEOUT = 3.0  # s one resolution may take before it counts as failed
HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "host",
               "content-encoding"}  # the client session decompresses what it reads


@dataclass
class Replica:
    url: str
    group: int  # index into the model's groups
    deployment: Deployment
    kv_tokens: int
    cap: int  # requests in flight past which it takes no more (its batch and as many waiting)
    in_flight: int = 0
    waiting_tokens: int = 0  # prompt tokens of requests without a first token yet
    down_until: float = 0.0  # a connection failed: not chosen before this (monotonic s)
    healthy: bool = True  # its /health answered at the last check (ejected while False)
    late: int = 0  # /health checks in a row that timed out (HEALTH_TIMEOUTS eject it)
    # (load index, position) in the fleet routing now: a replica kept by a new plan or a new
    # set of resolved addresses moves there, and the requests it holds still count
    home: tuple[LoadIndex, int] | None = field(default=None, repr=False, compare=False)

    def fits(self, req: RouteRequest) -> bool:
        return req.input_tokens + (req.max_tokens or 0) <= self.kv_tokens


@dataclass
class ModelFleet:
    """route.Fleet over one model's backends, as the gateway counts them."""

    replicas: list[Replica]
    groups: list[list[int]]
    group_ids: list[str]
    index: LoadIndex = field(init=False)

    def __post_init__(self) -> None:
        self.index = LoadIndex(self.groups, len(self.replicas))

    def __len__(self) -> int:
        return len(self.replicas)

    def refresh(self, group: int, now: float) -> None:
        """The index is current: count() keeps it so."""

    def count(self, replica: int, change: int) -> None:
        """A request to the replica starts (+1) or ends (-1)."""
        r = self.replicas[replica]
        r.in_flight += change
        self.index.set(replica, r.in_flight, sent=change > 0)
        if r.home is not None and r.home[0] is not self.index:  # now in a newer fleet
            r.home[0].set(r.home[1], r.in_flight, sent=change > 0)

    def load(self, replica: int, now: float) -> int:
        return self.replicas[replica].in_flight

    def pending_prefill(self, replica: int, now: float) -> int:
        return self.replicas[replica].waiting_tokens

    def holds(self, replica: int, req: RouteRequest) -> bool:
        r = self.replicas[replica]
        return r.healthy and r.in_flight < r.cap and r.down_until <= time.monotonic() \
            and r.fits(req)

    def deployment(self, replica: int) -> Deployment:
        return self.replicas[replica].deployment


ACCESS_LOG = logging.getLogger("hetserve.gateway.access")  # JSON lines, when enabled
DISCOVERY_LOG = logging.getLogger("hetserve.gateway.discovery")  # resolved addresses change
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0,
                   10.0, 20.0, 60.0)


class Gateway:
    """Routes by `plan` over `backends` (group id -> URLs, and names to resolve: see
    gateway.backends). `api_keys`: the Bearer tokens clients must send to /v1 (none: open);
    `admin_token`: the Bearer token of /admin (none: /admin is off); `counters`: model -> how
    its prompts are counted (default: words; see hetserve.route.request); `resolver`: async
    (host, port) -> [(address, port)] for the `resolve: true` names (default: getaddrinfo),
    resolved at startup and every `resolve_interval` seconds (0: at startup only)."""

    def __init__(self, plan: Plan, backends: Backends,
                 api_keys: Sequence[str] = (), admin_token: str | None = None,
                 max_body: int = MAX_BODY, queue_factor: float = QUEUE_FACTOR,
                 health_interval: float = HEALTH_INTERVAL,
                 health_timeout: float = HEALTH_TIMEOUT,
                 counters: dict[str, PromptCounter] | None = None,
                 read_timeout: float = READ_TIMEOUT,
                 resolver: Callable[[str, int], Awaitable[Iterable[Address]]] | None = None,
                 resolve_interval: float = RESOLVE_SECONDS) -> None:
        self.api_keys = frozenset(api_keys)
        self.resolver = resolver or resolve
        self.resolve_interval = resolve_interval
        self._resolve_task: asyncio.Task | None = None
        self.resolved: dict[str, list[Address]] = {}  # name's URL -> its last known addresses
        self._unresolved: set[str] = set()  # names whose last resolution failed (logged once)
        # a lookup per name at most: one that outlives RESOLVE_TIMEOUT (a DNS outage can block
        # getaddrinfo for tens of seconds) is awaited again next round, not started anew, so
        # lookups never pile up in the thread pool that tokenisation shares
        self._lookups: dict[str, asyncio.Future] = {}
        self.fleets: dict[str, ModelFleet] = {}
        self.read_timeout = read_timeout
        self.counters = dict(counters or {})
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self._health_task: asyncio.Task | None = None
        self.queue_factor = queue_factor
        self.admin_token = admin_token
        self.registry = CollectorRegistry()
        self.requests = Counter("hetserve:requests", "Requests by model, group and outcome.",
                                ["model", "group", "outcome"], registry=self.registry)
        self.refused = Counter("hetserve:refused", "Requests answered without a backend, by "
                               "status.", ["status"], registry=self.registry)
        self.in_flight = Gauge("hetserve:requests_in_flight", "Requests in flight per group.",
                               ["model", "group"], registry=self.registry)
        self.latency = Histogram("hetserve:request_latency_seconds", "End-to-end latency.",
                                 ["model", "group"], registry=self.registry)
        self.spilled = Counter("hetserve:spilled", "Requests sent past their share to a "
                               "replica with less prefill queued.", ["model"],
                               registry=self.registry)
        self.plan_swaps = Counter("hetserve:plan_swaps", "Plans installed by POST /admin/plan.",
                                  registry=self.registry)
        self.retries = Counter("hetserve:retries", "Requests sent again to another replica.",
                               ["model"], registry=self.registry)
        by_key = ["model", "group", "key"]
        self.ttft = Histogram("hetserve:time_to_first_token_seconds", "TTFT of streamed "
                              "requests, by group and routing key (prompt range, and output "
                              "bound by max_tokens).", by_key,
                              buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tpot = Histogram("hetserve:time_per_output_token_seconds", "Mean time between "
                              "streamed chunks after the first.", by_key,
                              buckets=LATENCY_BUCKETS, registry=self.registry)
        self.share = Gauge("hetserve:group_share", "Share of the model's completed requests "
                           "each group served (compare hetserve:planned_share).",
                           ["model", "group"], registry=self.registry)
        self.planned = Gauge("hetserve:planned_share", "Share of the model's requests the "
                             "plan gives each group.", ["model", "group"],
                             registry=self.registry)
        self.served: dict[str, dict[str, int]] = {}  # model -> group id -> completed
        self.slo = Counter("hetserve:slo_requests", "Streamed requests by whether they met "
                           "both SLO limits of the plan (TTFT, and TPOT after the first "
                           "token).", ["model", "group", "met"], registry=self.registry)
        self.arrivals = Counter("hetserve:arrivals", "Requests received, by routing key "
                                "(prompt range, and output bound by max_tokens): the traffic "
                                "an autoscaler estimates rate and mix from.", ["model", "key"],
                                registry=self.registry)
        self.cost = Gauge("hetserve:group_usd_per_hour", "Price of each replica group of the "
                          "plan, all its replicas.", ["model", "group", "accelerator"],
                          registry=self.registry)
        self.healthy = Gauge("hetserve:replica_healthy", "1 while a replica's /health answers "
                             "200.", ["model", "group", "backend"], registry=self.registry)
        self.ejections = Counter("hetserve:health_changes", "Replicas ejected by a failed "
                                 "health check, or back.", ["model", "change"],
                                 registry=self.registry)
        self.discovered = Gauge("hetserve:discovered_replicas", "Replicas of a group found by "
                                "resolving its backends' names (resolve: true: one per "
                                "address; 0 while a name never resolved).", ["model", "group"],
                                registry=self.registry)
        self._install(plan, backends)
        self.session: aiohttp.ClientSession | None = None
        self.app = web.Application(client_max_size=max_body, middlewares=[self._auth])
        self.app.add_routes(openai_routes(self))
        self.app.add_routes([web.post("/admin/plan", self.admin_plan),
                             web.get("/admin/plan", self.current_plan)])
        self.app.on_startup.append(self._open)
        self.app.on_cleanup.append(self._close)

    def _install(self, plan: Plan, backends: Backends) -> None:
        """Routing state for `plan` over `backends` (its names as last resolved), in one
        assignment. A replica the new state keeps (same model, group, deployment and URL) is
        the same object, with its requests in flight, health and time set aside."""
        keep = {e.url for e in names(backends)}
        self.resolved = {url: a for url, a in self.resolved.items() if url in keep}
        self._unresolved &= keep
        urls = expand(backends, self.resolved)
        before = {(m, f.group_ids[r.group], r.url) for m, f in self.fleets.items()
                  for r in f.replicas}
        fleets, routers = self._build(plan, urls, self.queue_factor, self.fleets)
        self.plan, self.fleets, self.routers = plan, fleets, routers
        self.names = served_models(plan)
        self.spec, self.backends = backends, urls
        now = {(m, f.group_ids[r.group], r.url) for m, f in fleets.items() for r in f.replicas}
        for labels in before - now:  # a replica gone: its health is no longer reported
            with contextlib.suppress(KeyError):
                self.healthy.remove(*labels)
        self.planned.clear()
        self.cost.clear()
        self.discovered.clear()
        for g in plan.groups:
            self.planned.labels(g.model, g.id).set(plan.planned_share(g))
            self.cost.labels(g.model, g.id, g.accelerator).set(g.usd_per_hour)
            found = [e for e in backends[g.id] if isinstance(e, Resolve)]
            if found:
                self.discovered.labels(g.model, g.id).set(
                    sum(len(self.resolved.get(e.url, ())) for e in found))

    @staticmethod
    def _build(plan: Plan, backends: dict[str, list[str]], queue_factor: float,
               previous: dict[str, ModelFleet] | None = None
               ) -> tuple[dict[str, ModelFleet], dict[str, PlanRouter]]:
        """Fleets and routers; a replica of `previous` fleets with the same model, group,
        deployment and URL is kept (each at most once)."""
        old: dict[tuple[str, str, str], list[Replica]] = {}
        for model, fleet in (previous or {}).items():
            for r in fleet.replicas:
                old.setdefault((model, fleet.group_ids[r.group], r.url), []).append(r)
        fleets, routers = {}, {}
        for entry in plan.models:
            groups = [g for g in plan.groups if g.model == entry.name]
            deps = [plan.deployment(g) for g in groups]
            replicas, members = [], []
            for j, (g, dep) in enumerate(zip(groups, deps, strict=True)):
                members.append(list(range(len(replicas), len(replicas) + len(backends[g.id]))))
                cap = max(1, int(queue_factor * dep.max_seqs))
                kv = g.kv_tokens or dep.kv_capacity_tokens
                for url in backends[g.id]:
                    same = old.get((entry.name, g.id, url))
                    if same and (same[0].group, same[0].deployment, same[0].kv_tokens,
                                 same[0].cap) == (j, dep, kv, cap):
                        replicas.append(same.pop(0))
                    else:
                        replicas.append(Replica(url, j, dep, kv, cap))
            fleet = fleets[entry.name] = ModelFleet(replicas, members, [g.id for g in groups])
            for i, r in enumerate(replicas):
                r.home = (fleet.index, i)
                if r.in_flight:
                    fleet.index.set(i, r.in_flight)
            routers[entry.name] = PlanRouter(fleet, RoutingTable.from_plan(entry, groups, deps))
        return fleets, routers

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        path = request.path
        if path.startswith("/admin/"):
            if self.admin_token is None:
                return self._refuse(403, "the admin API is off (start with --admin-token)",
                                    "PermissionDeniedError")
            if _bearer(request) != self.admin_token:
                return self._refuse(401, "admin: missing or wrong token", "AuthenticationError")
        elif path.startswith("/v1/") and self.api_keys and _bearer(request) not in self.api_keys:
            return self._refuse(401, "Incorrect API key provided: send 'Authorization: Bearer "
                                "KEY'", "AuthenticationError")
        return await handler(request)

    def _refuse(self, status: int, message: str, kind: str = "BadRequestError",
                param: str | None = None, model: str | None = None,
                body: dict | None = None) -> web.Response:
        """An answer without a backend (a client error when 4xx): counted by status, and with
        the request's `model` one access-log line, outcome "refused"."""
        self.refused.labels(str(status)).inc()
        if model is not None and ACCESS_LOG.isEnabledFor(logging.INFO):
            ACCESS_LOG.info(json.dumps({
                "ts": round(time.time(), 3), "model": model, "group": None, "backend": None,
                "stream": bool((body or {}).get("stream")), "outcome": "refused",
                "status": status, "param": param}))
        return _error(status, message, param, kind)

    async def admin_plan(self, request: web.Request) -> web.Response:
        """Install a new plan and backends, {"plan": {...}, "backends": {...}}, at once:
        requests in flight finish on the replicas they were sent to."""
        try:
            body = await _json(request)
            if not isinstance(body, dict) or set(body) != {"plan", "backends"}:
                raise BadRequest("body: expected {\"plan\": ..., \"backends\": ...}")
            plan = parse_plan(body["plan"], "POST /admin/plan: plan")
            backends = parse_backends(body["backends"], plan, "POST /admin/plan: backends")
        except (BadRequest, HetserveError) as exc:
            return self._refuse(400, str(exc))
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(413, "body: larger than the gateway accepts")
        # names the gateway has not resolved yet: before they route (bounded by the timeout)
        await self._resolve([e for e in names(backends) if e.url not in self.resolved])
        self._install(plan, backends)
        self.plan_swaps.inc()
        return web.json_response({"groups": {g: len(u) for g, u in self.backends.items()},
                                  "models": [m.name for m in plan.models]})

    async def current_plan(self, request: web.Request) -> web.Response:
        """The plan routing now and its backends (what POST /admin/plan takes: names to
        resolve as given, not their addresses)."""
        return web.json_response({"plan": self.plan.to_dict(), "backends": to_json(self.spec)})

    async def _open(self, app) -> None:
        gc.collect()
        gc.freeze()  # the plan, tables and modules loaded so far: out of every later collection
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # the replicas' caps bound concurrency
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_SECONDS,
                                          sock_read=self.read_timeout))
        if names(self.spec):  # before the gateway listens (and the first health checks)
            await self._resolve(names(self.spec))
            self._follow()
        if self.health_interval > 0:
            self._health_task = asyncio.get_running_loop().create_task(self._check_health())
        if self.resolve_interval > 0:
            self._resolve_task = asyncio.get_running_loop().create_task(self._discover())

    async def _close(self, app) -> None:
        for task in (self._health_task, self._resolve_task, *self._lookups.values()):
            if task is not None:
                task.cancel()
        if self.session is not None:
            await self.session.close()

    async def _check_health(self) -> None:
        """Every health_interval: GET each replica's /health; one that fails is ejected (no
        request goes to it) until it answers 200 again. A refused connection or an error
        status ejects it at once; a check that times out only the HEALTH_TIMEOUTS-th in a row
        (a loaded engine is slow to answer, not failing)."""
        timeout = aiohttp.ClientTimeout(total=self.health_timeout, sock_connect=min(
            CONNECT_SECONDS, self.health_timeout))

        async def probe(model: str, r: Replica) -> None:
            late = 0
            try:
                async with self.session.get(r.url + "/health", timeout=timeout) as resp:
                    ok = resp.status == 200
            except TimeoutError as exc:  # slow to answer: out on the HEALTH_TIMEOUTS-th in a
                late = r.late + 1  # row, or at once if the connection itself hung (host gone)
                hung = isinstance(exc, CONNECT_TIMEOUT)
                ok = r.healthy and late < HEALTH_TIMEOUTS and not hung
            except aiohttp.ClientError:
                ok = False
            current = self.fleets.get(model)
            if current is None or not any(x is r for x in current.replicas):
                return  # gone while it was probed (a new plan or addresses): not reported
            r.late = late
            if ok != r.healthy:
                self.ejections.labels(model, "back" if ok else "ejected").inc()
            r.healthy = ok
            self.healthy.labels(model, current.group_ids[r.group], r.url).set(float(ok))

        while True:
            fleets = dict(self.fleets)  # a plan swap installs new ones; check what routes now
            await asyncio.gather(*(probe(m, r) for m, f in fleets.items()
                                   for r in f.replicas))
            await asyncio.sleep(self.health_interval)

    async def _discover(self) -> None:
        """Every resolve_interval: resolve the backends' names again; a group whose addresses
        changed routes over the new ones (the plan re-installed with them)."""
        while True:
            await asyncio.sleep(self.resolve_interval)
            try:
                await self._resolve(names(self.spec))
                self._follow()
            except Exception:  # never let one bad round end discovery
                DISCOVERY_LOG.exception("resolving the backends' names failed")

    def _follow(self) -> None:
        """Re-install the current plan if its names now resolve to other addresses."""
        if expand(self.spec, self.resolved) != self.backends:
            self._install(self.plan, self.spec)

    async def _resolve(self, entries: Sequence[Resolve]) -> None:
        """Resolve each name once, at the same time; a name that resolves to nothing or fails
        keeps its last known addresses (none yet: its URL serves as one replica)."""
        if not entries:
            return
        found = await asyncio.gather(*(self._lookup(e) for e in entries))
        for e, (got, why) in zip(entries, found, strict=True):
            known = self.resolved.get(e.url)
            if not got:
                if e.url not in self._unresolved:
                    self._unresolved.add(e.url)
                    DISCOVERY_LOG.warning(
                        "%s: %s; %s", e.url, why,
                        f"keeping its {len(known)} last known addresses" if known else
                        "routing to the URL itself until it resolves")
                continue
            if e.url in self._unresolved:
                self._unresolved.discard(e.url)
                if known:  # (else the change below says it)
                    DISCOVERY_LOG.info("%s resolves again", e.url)
            if got != known:
                self.resolved[e.url] = got
                old, new = set(known or ()), set(got)
                change = [f"+{_where(a)}" for a in got if a not in old] + \
                    [f"-{_where(a)}" for a in known or () if a not in new]
                DISCOVERY_LOG.info("%s: %d replica%s (%s)", e.url, len(got),
                                   "" if len(got) == 1 else "s", ", ".join(change))

    async def _lookup(self, e: Resolve) -> tuple[list[Address], str]:
        """(addresses, deduplicated and sorted, or none; why none)."""
        task = self._lookups.get(e.url)
        if task is None:  # else the last one, still running or done since: its answer
            task = self._lookups[e.url] = asyncio.ensure_future(self.resolver(e.host, e.port))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # (retrieved)
        try:
            got = await asyncio.wait_for(asyncio.shield(task), RESOLVE_TIMEOUT)
        except TimeoutError:
            return [], f"no answer from the resolver in {RESOLVE_TIMEOUT:g} s"
        except (OSError, UnicodeError, ValueError) as exc:
            return [], f"cannot resolve {e.host} ({getattr(exc, 'strerror', None) or exc})"
        finally:
            if task.done():  # answered (or failed): the next round asks again
                self._lookups.pop(e.url, None)
        got = addresses(got)
        return got, "" if got else f"{e.host} resolves to no address (no pod ready yet?)"

    def model_of(self, name) -> str:
        """The plan's model served under `name`: its name or its Hugging Face id, the names its
        engines serve (`--served-model-name`), exactly as they compare them."""
        if isinstance(name, str) and name in self.names:
            return self.names[name]
        raise LookupError(name)

    # ---- endpoints ------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._route(request, "/v1/completions", chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._route(request, "/v1/chat/completions", chat=True)

    async def models(self, request: web.Request) -> web.Response:
        now = int(time.time())
        return web.json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": now, "owned_by": "hetserve",
             "root": e.spec.hf_id or e.name, "max_model_len": e.context_limit}
            for e in self.plan.models for name in e.served_names]})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---- proxying -------------------------------------------------------------------------
    async def _route(self, request: web.Request, path: str, chat: bool) -> web.StreamResponse:
        try:
            body = await _json(request)
            if not isinstance(body, dict):
                raise BadRequest("body: expected a JSON object")
        except BadRequest as exc:
            return self._refuse(400, str(exc))
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(413, "body: larger than the gateway accepts")
        try:
            model = self.model_of(body.get("model"))
        except LookupError:
            return self._refuse(404, f"The model `{body.get('model')}` does not exist.",
                                "NotFoundError", "model")
        counter = self.counters.get(model, WORDS)
        entry = self.plan.model_entry(model)
        try:
            if counter is not WORDS and (request.content_length or 0) > TOKENIZE_INLINE:
                view = await asyncio.to_thread(route_request, body, chat, counter)
            else:
                view = route_request(body, chat, counter)
            check_context(view.input_tokens, view.max_tokens, entry.context_limit)
        except BadRequest as exc:
            return self._refuse(400, str(exc), param=exc.param, model=model, body=body)
        fleet, router = self.fleets[model], self.routers[model]
        key = router.table.label(router.key_of(view))
        self.arrivals.labels(model, key).inc()
        last = ""
        for attempt in range(len(fleet)):  # on another replica while nothing was sent
            spilled = router.spilled
            k = router.route(view, time.monotonic())
            if router.spilled > spilled:
                self.spilled.labels(model).inc()
            if k < 0:
                break
            if attempt:
                self.retries.labels(model).inc()
            try:
                return await self._proxy(request, body, path, entry, fleet, k, view, key)
            except _Retry as exc:  # a 5xx before any byte reached the client
                fleet.replicas[k].down_until = time.monotonic() + RETRY_COOLDOWN
                last = f"{fleet.replicas[k].url}: {exc}"
            except _Unreachable as exc:  # failed before the client got a byte
                fleet.replicas[k].down_until = time.monotonic() + DOWN_SECONDS
                last = f"{fleet.replicas[k].url}: {exc}"
            except _TimedOut:  # the backend is there but sent nothing: not sent again
                quiet = quiet_limit(self.read_timeout, entry, body, view)
                return self._refuse(504, f"{fleet.replicas[k].url} sent nothing for "
                                    f"{quiet:.3g} s: timed out (the request may still run "
                                    "there)", "GatewayTimeoutError")
        if not last and any(r.fits(view) for r in fleet.replicas):
            busy = sum(r.in_flight for r in fleet.replicas)
            aside = sum(r.down_until > time.monotonic() for r in fleet.replicas)
            ejected = sum(not r.healthy for r in fleet.replicas)
            response = self._refuse(503, f"every replica of {model} that could serve this "
                                    f"request is saturated or set aside after a failure "
                                    f"({busy} requests in flight, {aside} replicas set aside, "
                                    f"{ejected} failing their health check): retry shortly",
                                    "ServiceUnavailableError")
            response.headers["Retry-After"] = str(RETRY_AFTER)
            return response
        if not last:
            return self._refuse(400, f"{view.input_tokens + (view.max_tokens or 0)} tokens fit "
                                f"no replica of {model}", param="max_tokens", model=model,
                                body=body)
        return self._refuse(502, f"no backend of {model} served the request ({last})",
                            "BadGatewayError")

    async def _proxy(self, request: web.Request, body: dict, path: str, entry: ModelEntry,
                     fleet: ModelFleet, k: int, view: RouteRequest, key: str
                     ) -> web.StreamResponse:
        """`entry`: the request's model as the plan was when it arrived (one swapped in since
        may not have it); `key`: the request's routing key, as metrics label it."""
        model = entry.name
        replica = fleet.replicas[k]
        group = fleet.group_ids[replica.group]
        fleet.count(k, 1)
        replica.waiting_tokens += view.input_tokens
        waiting = True
        self.in_flight.labels(model, group).inc()
        start = time.monotonic()
        first = 0.0
        outcome = "error"
        try:
            served = engine_names(replica.deployment.engine, entry.served_names)
            if body.get("model") in served:  # the client's own bytes (read once, cached by
                data = await request.read()  # aiohttp): no re-encoding
            else:  # a name of the model this engine does not answer to (SGLang serves one)
                data = json.dumps(body | {"model": served[0]}).encode()
            try:
                quiet = quiet_limit(self.read_timeout, entry, body, view)
                longer = {} if quiet == self.read_timeout else {"timeout": aiohttp.ClientTimeout(
                    total=None, sock_connect=CONNECT_SECONDS, sock_read=quiet)}
                upstream = await self.session.post(replica.url + path, data=data,
                                                   headers=JSON_HEADERS, **longer)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = _failure(exc)
                raise _failed(exc) from None
            async with upstream:
                if upstream.status >= 500:
                    outcome = f"http_{upstream.status}"
                    raise _Retry(f"HTTP {upstream.status}")
                headers = {h: v for h, v in upstream.headers.items()
                           if h.lower() not in HOP_HEADERS}
                if not body.get("stream") or upstream.status != 200:
                    try:
                        data = await upstream.read()
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        outcome = _failure(exc)  # nothing reached the client
                        raise _failed(exc) from None
                    outcome = "ok" if upstream.status == 200 else f"http_{upstream.status}"
                    return web.Response(status=upstream.status, body=data, headers=headers)
                resp = web.StreamResponse(status=200, headers=headers)
                # from here on the client has bytes: whatever fails, this attempt answers
                if not await _client_write(resp, request=request):
                    outcome = "cancelled"
                    return resp
                events = 0
                try:
                    async for chunk in upstream.content.iter_any():
                        if waiting:
                            replica.waiting_tokens -= view.input_tokens
                            waiting = False
                            first = time.monotonic()
                            self.ttft.labels(model, group, key).observe(first - start)
                        events += chunk.count(b"data: {")
                        if not await _client_write(resp, chunk):
                            outcome = "cancelled"  # the client went away
                            return resp
                except (aiohttp.ClientError, TimeoutError) as exc:  # the backend, mid-stream
                    if _failure(exc) == "timeout":
                        outcome, status, kind = "timeout", 504, "GatewayTimeoutError"
                        why = f"sent nothing for {self.read_timeout:g} s mid-stream"
                    else:
                        outcome, status, kind = "broken", 502, "BadGatewayError"
                        why = f"failed mid-stream: {str(exc) or type(exc).__name__}"
                    await _client_write(resp, b"data: " + json.dumps(error_body(
                        status, f"{replica.url} {why}", None, kind)).encode() + b"\n\n",
                        eof=True)
                    return resp
                tpot = (time.monotonic() - first) / (events - 1) if events > 2 else 0.0
                if events > 2:  # the usage chunk, if any, counts as one: a close estimate
                    self.tpot.labels(model, group, key).observe(tpot)
                slo = next((m.slo for m in self.plan.models if m.name == model), None)
                if first and slo is not None:  # (a plan swapped in since may not have it)
                    met = first - start <= slo.ttft and tpot <= slo.tpot
                    self.slo.labels(model, group, "true" if met else "false").inc()
                outcome = "ok" if await _client_write(resp, eof=True) else "cancelled"
                return resp
        except asyncio.CancelledError:  # the client went away (its handler is cancelled)
            outcome = "cancelled"
            raise
        finally:
            if waiting:
                replica.waiting_tokens -= view.input_tokens
            fleet.count(k, -1)
            self.in_flight.labels(model, group).dec()
            self.requests.labels(model, group, outcome).inc()
            took = time.monotonic() - start
            self.latency.labels(model, group).observe(took)
            if outcome == "ok":
                self._count_share(model, group)
            if ACCESS_LOG.isEnabledFor(logging.INFO):  # one JSON line, never prompt or text
                ACCESS_LOG.info(json.dumps({
                    "ts": round(time.time(), 3), "model": model, "group": group,
                    "backend": replica.url, "key": key,
                    "prompt_tokens": view.input_tokens, "max_tokens": view.max_tokens,
                    "stream": bool(body.get("stream")), "outcome": outcome,
                    "seconds": round(took, 4),
                    "ttft": round(first - start, 4) if body.get("stream") and first else None}))

    def _count_share(self, model: str, group: str) -> None:
        served = self.served.setdefault(model, {})
        served[group] = served.get(group, 0) + 1
        total = sum(served.values())
        for g, n in served.items():
            self.share.labels(model, g).set(n / total)


def _where(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def served_models(plan: Plan) -> dict[str, str]:
    """Every name the plan's engines serve -> its model: each model's own name, and its Hugging
    Face id (the first model's, when two share one; never over a model's own name)."""
    names: dict[str, str] = {}
    for entry in plan.models:
        for name in entry.served_names[1:]:
            names.setdefault(name, entry.name)
    return names | {entry.name: entry.name for entry in plan.models}


class _Retry(Exception):
    """The backend answered 5xx before anything reached the client: try another."""


class _Unreachable(Exception):
    """The backend failed (connection refused, dropped, or not made in time) before anything
    reached the client."""


# a connection that timed out (aiohttp >= 3.10 tells it from a read timeout; before, every
# timeout is a read timeout here)
CONNECT_TIMEOUT: type | tuple = getattr(aiohttp, "ConnectionTimeoutError", ())


def quiet_limit(read_timeout: float, entry: ModelEntry, body: dict, view: RouteRequest
                ) -> float:
    """s a backend may send nothing before the request counts as timed out: `read_timeout`
    while it streams; a whole answer (not streamed) comes only with its last token, so also
    twice the time its tokens take within the SLO (TTFT, then TPOT a token)."""
    if body.get("stream"):
        return read_timeout
    tokens = view.max_tokens or max(entry.context_limit - view.input_tokens, 1)
    return read_timeout + 2.0 * (entry.slo.ttft + tokens * entry.slo.tpot)


class _TimedOut(Exception):
    """The backend took the request and then sent nothing for the read timeout."""


def _failure(exc: BaseException) -> str:
    """A backend failure's outcome: "timeout" when a connected backend sent nothing for the
    read timeout, "unreachable" for a connection that failed (refused, dropped, timed out)."""
    if isinstance(exc, TimeoutError) and not isinstance(exc, CONNECT_TIMEOUT):
        return "timeout"
    return "unreachable"


def _failed(exc: BaseException) -> Exception:
    reason = str(exc) or type(exc).__name__
    return _TimedOut(reason) if _failure(exc) == "timeout" else _Unreachable(reason)


async def _client_write(resp: web.StreamResponse, data: bytes = b"", eof: bool = False,
                        request: web.Request | None = None) -> bool:
    """Prepare (with `request`), write or finish the client's response; False if the client
    has gone (its connection reset), which is not the backend's failure."""
    try:
        if request is not None:
            await resp.prepare(request)
        if data:
            await resp.write(data)
        if eof:
            await resp.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        return False
    return True


async def _json(request: web.Request):
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("body: not valid JSON") from None


JSON_HEADERS = {"Content-Type": "application/json"}


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def _error(status: int, message: str, param: str | None = None,
           kind: str = "BadRequestError") -> web.Response:
    return web.json_response(error_body(status, message, param, kind), status=status)


class GatewayServer:
    """The gateway bound to a port (0: any free one)."""

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int = 0) -> None:
        self.gateway, self.host, self.port = gateway, host, port
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        self._runner = web.AppRunner(self.gateway.app, access_log=None, handle_signals=False,
                                     handler_cancellation=True, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, backlog=BACKLOG).start()
        self.url = f"http://{self.host}:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

