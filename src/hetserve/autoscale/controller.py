"""Controller mode: the autoscaler against a running gateway.

Every `interval` it reads the gateway's `/metrics`: requests received per routing key
(`hetserve:arrivals_total`: prompt range, and output bound by `max_tokens`: what a gateway can
see). A key's rate is split among the plan's classes it may hold, in the proportions the plan
expects of them. Every `window` the re-planner decides from those estimates (autoscale.policy,
the same decision as in the day replay); a change is carried out by a `Capacity`: it brings the
new plan's replicas up first and returns their addresses, the gateway gets the new plan and
backends atomically (`POST /admin/plan`), and then the replicas the new plan no longer has are
let go (after `drain` seconds).

Capacities: `Emulators` (replicas as emulated engines in this process: runs on a laptop) and
`KubernetesSteps` (prints the `kubectl` steps of hetserve deploy, or runs them with apply).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from hetserve.autoscale.policy import Observation, Replanner, replica_kind, same_fleet
from hetserve.errors import HetserveError
from hetserve.plan.planfile import Plan, parse_plan
from hetserve.route import RoutingTable

ARRIVALS = re.compile(r'^hetserve:arrivals_total\{key="([^"]*)",model="([^"]*)"\} (\S+)', re.M)


def key_classes(plan: Plan) -> dict[str, dict[int, float]]:
    """Key label -> {class index: its share of the key's requests, as the plan expects}."""
    entry = plan.models[0]
    groups = [g for g in plan.groups if g.model == entry.name]
    table = RoutingTable.from_plan(entry, groups, [plan.deployment(g) for g in groups])
    out: dict[str, dict[int, float]] = {}
    n_prompt = len(table.prompt_edges) - 1
    for key in range(n_prompt * table.n_caps):
        lo, hi = table.prompt_range(key)
        cap = key % table.n_caps
        limit = table.output_starts[cap] if table.output_starts else float("inf")
        members = {w: max(c.rate, 1e-9) for w, c in enumerate(entry.classes)
                   if c.input_range == (lo, hi) and c.output_range[0] <= limit}
        total = sum(members.values())
        if total > 0:
            out[table.label(key)] = {w: r / total for w, r in members.items()}
    # a cap below every class of its prompt range routes as the range's lowest class's key
    # (RoutingTable.from_plan): its requests are that key's classes'
    for key in range(n_prompt * table.n_caps - 1, -1, -1):
        nxt = key + 1
        if key % table.n_caps < table.n_caps - 1 and table.label(key) not in out \
                and table.label(nxt) in out:
            out[table.label(key)] = out[table.label(nxt)]
    return out


def class_counts(plan: Plan, key_counts: dict[str, float]) -> np.ndarray:
    """Requests per class of the plan's model from requests per key."""
    split = key_classes(plan)
    out = np.zeros(len(plan.models[0].classes))
    for label, n in key_counts.items():
        for w, share in split.get(label, {}).items():
            out[w] += n * share
    return out


@dataclass
class Controller:
    gateway: str  # base URL
    admin_token: str
    policy: Replanner
    capacity: object  # Emulators or KubernetesSteps: async up(plan) -> backends; down(plan)
    window: float = 900.0
    interval: float = 15.0
    drain: float = 30.0
    log: list[str] = field(default_factory=list)
    plan: Plan | None = None
    changes: int = 0
    say: object = None  # called with a line per move

    async def get(self, session: aiohttp.ClientSession, path: str, admin: bool = False):
        headers = {"Authorization": f"Bearer {self.admin_token}"} if admin else {}
        try:
            async with session.get(self.gateway + path, headers=headers) as resp:
                if resp.status != 200:
                    raise HetserveError(f"{self.gateway}{path}: HTTP {resp.status}")
                return await (resp.json() if admin else resp.text())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HetserveError(f"--gateway {self.gateway}: cannot reach it "
                                f"({type(exc).__name__})") from None

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: read the metrics every interval, decide every window."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            current = await self.get(session, "/admin/plan", admin=True)
            self.plan = parse_plan(current["plan"], f"{self.gateway}/admin/plan")
            model = self.plan.models[0].name
            mine = [c.name for c in self.policy.demand.workload.classes]
            if [c.name for c in self.plan.models[0].classes] != mine:
                raise HetserveError(f"{self.gateway}: the gateway's plan has other request "
                                    "classes than --model/--workload give: start the "
                                    "controller with the plan's model and workload")
            last = self._key_counts(await self.get(session, "/metrics"), model)
            seen = class_counts(self.plan, last) + np.array(
                [c.rate for c in self.plan.models[0].classes]) * self.window  # the plan's prior
            window_counts = np.zeros_like(seen)
            rates: list[float] = [self.plan.models[0].rate]
            started, changed_at, next_decision = time.monotonic(), -float("inf"), \
                time.monotonic() + self.window
            window_start = time.monotonic()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):  # (stop set: a last reading)
                    await asyncio.wait_for(stop.wait(), self.interval)
                now_counts = self._key_counts(await self.get(session, "/metrics"), model)
                # a counter below its last reading: the gateway restarted (from 0)
                delta = {k: n - last.get(k, 0.0) if n >= last.get(k, 0.0) else n
                         for k, n in now_counts.items()}
                last = now_counts
                counts = class_counts(self.plan, delta)
                window_counts += counts
                seen += counts
                if time.monotonic() < next_decision or stop.is_set():
                    continue
                rates.append(float(window_counts.sum())
                             / max(time.monotonic() - window_start, 1e-9))
                window_start = time.monotonic()
                obs = Observation(time=time.monotonic() - started, window=self.window,
                                  counts=window_counts.copy(), seen=seen.copy(),
                                  rates=tuple(rates), outstanding=0.0, available={},
                                  current=self.plan, changed_at=changed_at - started)
                window_counts[:] = 0
                next_decision = time.monotonic() + self.window
                target = self.policy.decide(obs)
                if target is None or same_fleet(target, self.plan):
                    continue
                await self._move(session, target)
                changed_at = time.monotonic()

    @staticmethod
    def _key_counts(text: str, model: str) -> dict[str, float]:
        return {m.group(1): float(m.group(3)) for m in ARRIVALS.finditer(text)
                if m.group(2) == model}

    async def _move(self, session: aiohttp.ClientSession, target: Plan) -> None:
        """New capacity up, the gateway on the new plan, then the old capacity let go."""
        old = self.plan
        backends = await self.capacity.up(target)
        line = (f"{time.strftime('%H:%M:%S')} ${old.usd_per_hour:.2f}/h -> "
                f"${target.usd_per_hour:.2f}/h: " + ", ".join(
                    f"{g.replicas}x {g.accelerator} TP{g.tp}" for g in target.groups))
        if not getattr(self.capacity, "live", True):  # a dry run: the gateway stays
            self.plan, self.changes = target, self.changes + 1
            self.log.append("(dry run) " + line)
            if self.say:
                self.say(self.log[-1])
            await self.capacity.down(target)  # (prints the steps that would follow)
            return
        try:
            async with session.post(
                    self.gateway + "/admin/plan",
                    json={"plan": target.to_dict(), "backends": backends},
                    headers={"Authorization": f"Bearer {self.admin_token}"}) as r:
                if r.status != 200:
                    raise HetserveError(f"{self.gateway}/admin/plan refused the plan: HTTP "
                                        f"{r.status}: {await r.text()}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HetserveError(f"--gateway {self.gateway}: lost while moving to a new plan "
                                f"({type(exc).__name__}); its new capacity is up, the "
                                "gateway still routes by the old plan") from None
        self.plan, self.changes = target, self.changes + 1
        self.log.append(line)
        if self.say:
            self.say(line)
        await asyncio.sleep(self.drain)  # requests the old replicas hold finish
        await self.capacity.down(target)


class Emulators:
    """Replicas as emulated engines in this process, kept per config across plans."""

    def __init__(self) -> None:
        self.running: dict[tuple, list] = {}  # config -> [(Emulator, url)]

    async def up(self, plan: Plan) -> dict[str, list[str]]:
        from hetserve.emulate.server import group_emulator

        backends = {}
        for g in plan.groups:
            have = self.running.setdefault(replica_kind(g), [])
            while len(have) < g.replicas:
                emu = group_emulator(plan, g, replicas=1)
                (url,) = await emu.start()
                have.append((emu, url))
            backends[g.id] = [url for _, url in have[:g.replicas]]
        return backends

    async def down(self, plan: Plan, timeout: float = 600.0) -> None:
        """Stop the replicas `plan` does not use, once the requests they hold are done."""
        keep = {replica_kind(g): g.replicas for g in plan.groups}
        for key, have in self.running.items():
            while len(have) > keep.get(key, 0):
                emu, _ = have.pop()
                deadline = time.monotonic() + timeout
                while any(e.engine.outstanding_at(math.inf) for e in emu.engines) \
                        and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                await emu.stop()

    async def close(self) -> None:
        for have in self.running.values():
            for emu, _ in have:
                await emu.stop()
        self.running.clear()


class KubernetesSteps:
    """New capacity by the `kubectl` steps of hetserve deploy (printed; run with `apply`),
    manifests written to `folder`; the gateway gets the plan from the controller."""

    def __init__(self, opts, folder: str, apply: bool = False, say=print) -> None:
        self.opts, self.folder, self.apply, self.say = opts, folder, apply, say
        self.live = apply  # a dry run changes nothing, the gateway included
        self.current: Plan | None = None
        self._after: list[str] = []

    def start(self, plan: Plan) -> None:
        self.current = plan

    async def up(self, plan: Plan) -> dict[str, list]:
        from pathlib import Path

        from hetserve.deploy import group_names
        from hetserve.deploy.diff import manifests, phases
        from hetserve.deploy.kubernetes import backends
        from hetserve.errors import write_text

        if self.current is None:
            raise HetserveError("KubernetesSteps: start() with the running plan first")
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        for name, text in manifests(self.current, plan, self.opts).items():
            write_text(Path(self.folder) / name, text)
        before, _, self._after = phases(self.current, plan, self.opts, self.folder)
        await self._run(before)
        self.current = plan
        # each group's headless Service, which the gateway resolves to its ready pods
        return backends(plan, group_names(plan), self.opts.namespace)

    async def down(self, plan: Plan) -> None:
        await self._run(self._after)

    async def _run(self, steps: list[str]) -> None:
        import shlex

        for step in steps:
            self.say(step if self.apply else f"(dry run) {step}")
            if self.apply:
                proc = await asyncio.create_subprocess_exec(*shlex.split(step))
                if await proc.wait() != 0:
                    raise HetserveError(f"'{step}' failed with exit code {proc.returncode}")


class RaySteps:
    """New capacity on Ray Serve: the new plan's Serve config (hetserve deploy --target ray)
    written to `folder` and deployed (`serve deploy`, declarative: Serve starts the new
    replicas before it stops the old); printed, or run with `apply`."""

    def __init__(self, opts, folder: str, apply: bool = False, say=print) -> None:
        self.opts, self.folder, self.apply, self.say = opts, folder, apply, say
        self.live = apply

    async def up(self, plan: Plan) -> dict[str, list[str]]:
        from pathlib import Path

        from hetserve.deploy import group_names
        from hetserve.deploy.rayserve import HTTP_PORT, render_ray
        from hetserve.errors import write_text

        Path(self.folder).mkdir(parents=True, exist_ok=True)
        for name, text in render_ray(plan, self.opts).items():
            write_text(Path(self.folder) / name, text)
        await KubernetesSteps._run(self, [f"serve deploy {self.folder}/serve.yaml"])
        port = int(self.opts.extra.get("http_port", HTTP_PORT))
        names = group_names(plan)
        return {g.id: [f"http://127.0.0.1:{port}/{names[g.id]}"] * g.replicas
                for g in plan.groups}

    async def down(self, plan: Plan) -> None:
        """Serve let the old replicas go when it took the new config."""
