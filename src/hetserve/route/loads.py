"""Replicas by load, per replica group: the least loaded one in O(log n).

A fleet (the simulator's or a gateway's) sets a replica's load whenever it changes, saying when
the change is a request sent to it. Each group keeps a heap of (load, last sent, version,
replica) entries: the newest version per replica is current, the others are skipped when they
surface (and dropped when the heap grows past twice its group). Among equally loaded replicas
the one sent a request longest ago comes first, so idle replicas take turns. The order depends
only on the loads and on which replica each request went to, not on when a fleet noticed a
request finish: the simulator notices finishes lazily and its choices match a fleet that
notices each one at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from heapq import heapify, heappop, heappush


class LoadIndex:
    __slots__ = ("group_of", "load", "sent", "_version", "_heaps", "_sizes", "_clock")

    def __init__(self, groups: Sequence[Sequence[int]], size: int) -> None:
        self.group_of = [-1] * size
        self.load = [0] * size
        self.sent = [0] * size  # the order of the last request sent to each replica
        self._version = [0] * size
        self._clock = 0
        self._heaps: list[list[tuple[int, int, int, int]]] = []
        self._sizes = [len(members) for members in groups]
        for g, members in enumerate(groups):
            for i in members:
                self.group_of[i] = g
                self._clock += 1
                self.sent[i] = self._clock  # before any request: in group order
            self._heaps.append([(0, self.sent[i], 0, i) for i in members])

    def set(self, replica: int, load: int, sent: bool = False) -> None:
        """The replica's load is now `load`; `sent`: because a request was sent to it."""
        if sent:
            self._clock += 1
            self.sent[replica] = self._clock
        elif load == self.load[replica]:
            return
        self.load[replica] = load
        self._version[replica] += 1
        g = self.group_of[replica]
        heap = self._heaps[g]
        heappush(heap, (load, self.sent[replica], self._version[replica], replica))
        if len(heap) > 2 * self._sizes[g] + 16:  # drop the superseded entries
            heap[:] = [e for e in heap if self._version[e[3]] == e[2]]
            heapify(heap)

    def rank(self, replica: int) -> tuple[int, int]:
        """What orders replicas: (load, when it was last sent a request)."""
        return self.load[replica], self.sent[replica]

    def least(self, group: int, ok: Callable[[int], bool] | None = None) -> int:
        """The least loaded replica of the group that passes `ok` (all when None), or -1."""
        heap = self._heaps[group]
        version = self._version
        aside: list[tuple[int, int, int, int]] = []
        found = -1
        while heap:
            entry = heap[0]
            if version[entry[3]] != entry[2]:  # superseded
                heappop(heap)
                continue
            if ok is None or ok(entry[3]):
                found = entry[3]
                break
            aside.append(heappop(heap))
        for entry in aside:
            heappush(heap, entry)
        return found
