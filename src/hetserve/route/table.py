"""A plan's routing for one model, in terms a gateway can see.

The planner shares each request class (prompt x output range) among replica groups, but a
gateway sees a request's prompt and its `max_tokens`, not its output. The routable key is the
prompt's range and the output ranges `max_tokens` leaves possible: a request asking for at most
M tokens can only be of classes whose output range starts at or below M, so its key is the
prompt range with the output grid cut after M (`max_tokens` at or past the last range's start,
or none, cuts nothing). A key's shares are its classes' shares weighted by the classes' planned
rates. A group may also take a key's requests when the key's own groups are backed up
(`eligible`): every class of the key with planned traffic has capacity on that group's config.

Keys are integers: prompt key p and cap c (0..n_caps - 1, the last uncut) make p * n_caps + c."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from hetserve.perf import Deployment
from hetserve.plan.planfile import ModelEntry, ReplicaGroup

SPILL_SHARE = 0.75  # a prompt expected to wait longer than this share of the TTFT limit spills


@dataclass(frozen=True)
class RoutingTable:
    prompt_edges: tuple[int, ...]  # key k: prompts of [edges[k], edges[k + 1]) tokens
    shares: dict[int, list[tuple[int, float]]]  # key -> (group, share), shares adding to 1
    eligible: dict[int, list[int]]  # key -> groups that may take it when its own are backed up
    prefill_per_token: tuple[float, ...]  # per group: seconds per prompt token, full chunks
    spill_after: float  # seconds of expected prefill wait past which a request spills
    # starts of the output ranges, ascending: cap c keeps the classes whose output range starts
    # at or below output_starts[c]; () keys by prompt alone
    output_starts: tuple[int, ...] = ()
    # (key, group) whose planned share holds only best-effort classes: no latency promise to
    # keep there, so its requests stay (spilling them would leave the group the plan pays for
    # idle and load the groups that keep a promise)
    best_effort: frozenset[tuple[int, int]] = frozenset()

    @property
    def n_caps(self) -> int:
        return max(1, len(self.output_starts))

    def key(self, prompt_tokens: int, max_tokens: int | None = None) -> int:
        """The key of a request: its prompt's range (prompts past the first or last edge take
        the nearest, as the class grid does) and the output ranges its `max_tokens` allows."""
        k = bisect.bisect_right(self.prompt_edges, prompt_tokens) - 1
        k = min(max(k, 0), len(self.prompt_edges) - 2)
        return k * self.n_caps + self._cap(max_tokens)

    def _cap(self, max_tokens: int | None) -> int:
        if max_tokens is None or not self.output_starts:
            return self.n_caps - 1
        return min(max(bisect.bisect_right(self.output_starts, max_tokens) - 1, 0),
                   self.n_caps - 1)

    def prompt_range(self, key: int) -> tuple[int, int]:
        k = key // self.n_caps
        return self.prompt_edges[k], self.prompt_edges[k + 1]

    def label(self, key: int) -> str:
        """A key as the class grid names ranges: 'in1k-2k', or 'in1k-2k/out<64' when
        `max_tokens` leaves only outputs below 64 tokens possible."""
        lo, hi = self.prompt_range(key)
        name = f"in{_short(lo)}-{_short(hi)}"
        cap = key % self.n_caps
        if cap < self.n_caps - 1:
            name += f"/out<{_short(self.output_starts[cap + 1])}"
        return name

    @classmethod
    def from_plan(cls, entry: ModelEntry, groups: Sequence[ReplicaGroup],
                  deployments: Sequence[Deployment], by_class: bool = False) -> RoutingTable:
        """`groups`: the plan's groups of this model, in order; `deployments`: one per group.
        by_class: one key per class (its index), as the planner shared them: an oracle that
        knows each request's output (for comparison in simulation; `key` does not apply)."""
        ranges = sorted({c.input_range for c in entry.classes})
        # keys from the class grid's prompt edges (a range between two planned ones that no
        # class covers is a key without shares: its requests go to the least loaded replica)
        edges = sorted({lo for lo, _ in ranges} | {hi for _, hi in ranges})
        starts = () if by_class else tuple(sorted({c.output_range[0] for c in entry.classes}))
        n_caps = max(1, len(starts))
        weight: dict[int, dict[int, float]] = {}
        total: dict[int, float] = {}
        members: dict[int, list] = {}
        promised: set[tuple[int, int]] = set()  # (key, group) with a class that has the SLO
        tail = set(entry.best_effort)
        for w, c in enumerate(entry.classes):
            if by_class:
                keys = [w]
            else:  # every cap that leaves this class possible
                p = bisect.bisect_right(edges, c.input_range[0]) - 1
                first = starts.index(c.output_range[0])
                keys = [p * n_caps + cap for cap in range(first, n_caps)]
            rate = c.rate if c.rate > 0 else 1e-12  # a key with no planned traffic: even shares
            for k in keys:
                members.setdefault(k, []).append(c)
                total[k] = total.get(k, 0.0) + rate
                for j, g in enumerate(groups):
                    share = g.shares.get(c.name, 0.0)
                    if share > 0:
                        weight.setdefault(k, {})[j] = (weight.get(k, {}).get(j, 0.0)
                                                       + rate * share)
                        if c.name not in tail:
                            promised.add((k, j))
        shares = {k: [(j, w / total[k]) for j, w in sorted(ws.items())]
                  for k, ws in weight.items()}
        if not by_class:  # a cap below every class of its prompt range: the lowest class's
            for p in range(len(edges) - 1):  # key (the request is shorter, never longer)
                for cap in range(n_caps - 2, -1, -1):
                    k = p * n_caps + cap
                    if k not in members and k + 1 in members:
                        members[k] = members[k + 1]
                        if k + 1 in shares:
                            shares[k] = shares[k + 1]
        eligible = {}
        for k, cs in members.items():
            busy = [c for c in cs if c.rate > 0] or cs
            eligible[k] = [j for j, g in enumerate(groups)
                           if all(g.capacity.get(c.name, 0.0) > 0 for c in busy)]
        per_token = tuple(float(d.prefill_time(d.chunk_tokens)) / d.chunk_tokens
                          for d in deployments)
        best_effort = frozenset((k, j) for k, gs in shares.items() for j, _ in gs
                                if (k, j) not in promised)
        return cls(tuple(edges), shares, eligible, per_token, SPILL_SHARE * entry.slo.ttft,
                   starts, best_effort)


def _short(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)
