"""A plan's routing for one model, in terms a gateway can see.

The planner shares each request class (prompt x output range) among replica groups, but a
gateway sees a request's prompt, not its output. The routable key is the prompt's range, and a
key's shares are its classes' shares weighted by the classes' planned rates. A group may also
take a key's requests when the key's own groups are backed up (`eligible`): every class of the
key with planned traffic has capacity on that group's config."""

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

    def key(self, prompt_tokens: int, max_tokens: int | None = None) -> int:
        """The key of a request: its prompt's range (prompts past the first or last edge take
        the nearest, as the class grid does). `max_tokens` does not enter yet: the bundled
        traces carry none, so plans are made per prompt range."""
        k = bisect.bisect_right(self.prompt_edges, prompt_tokens) - 1
        return min(max(k, 0), len(self.prompt_edges) - 2)

    def label(self, key: int) -> str:
        """A key as the class grid names prompt ranges: 'in1k-2k'."""
        def short(n: int) -> str:
            return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)

        return f"in{short(self.prompt_edges[key])}-{short(self.prompt_edges[key + 1])}"

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
        key_of = {lo: bisect.bisect_right(edges, lo) - 1 for lo, _ in ranges}
        weight: dict[int, dict[int, float]] = {}
        total: dict[int, float] = {}
        members: dict[int, list] = {}
        for w, c in enumerate(entry.classes):
            k = w if by_class else key_of[c.input_range[0]]
            members.setdefault(k, []).append(c)
            rate = c.rate if c.rate > 0 else 1e-12  # a key with no planned traffic: even shares
            total[k] = total.get(k, 0.0) + rate
            for j, g in enumerate(groups):
                share = g.shares.get(c.name, 0.0)
                if share > 0:
                    weight.setdefault(k, {})[j] = weight.get(k, {}).get(j, 0.0) + rate * share
        shares = {k: [(j, w / total[k]) for j, w in sorted(ws.items())]
                  for k, ws in weight.items()}
        eligible = {}
        for k, cs in members.items():
            busy = [c for c in cs if c.rate > 0] or cs
            eligible[k] = [j for j, g in enumerate(groups)
                           if all(g.capacity.get(c.name, 0.0) > 0 for c in busy)]
        per_token = tuple(float(d.prefill_time(d.chunk_tokens)) / d.chunk_tokens
                          for d in deployments)
        return cls(tuple(edges), shares, eligible, per_token, SPILL_SHARE * entry.slo.ttft)
