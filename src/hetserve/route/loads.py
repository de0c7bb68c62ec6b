"""Replicas by load, per replica group: the least loaded one in O(log n).

A fleet (the simulator's or a gateway's) sets a replica's load whenever it changes; each group
keeps a heap of (load, stamp, replica) entries, the newest per replica current and the others
skipped when they surface (and dropped when the heap grows past twice its group). Among equally
loaded replicas the one whose load changed longest ago comes first: idle replicas take turns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from heapq import heapify, heappop, heappush


class LoadIndex:
    __slots__ = ("group_of", "load", "stamp", "_heaps", "_sizes", "_clock")

    def __init__(self, groups: Sequence[Sequence[int]], size: int) -> None:
        self.group_of = [-1] * size
        self.load = [0] * size
        self.stamp = [0] * size
        self._clock = 0
        self._heaps: list[list[tuple[int, int, int]]] = []
        self._sizes = [len(members) for members in groups]
        for g, members in enumerate(groups):
            for i in members:
                self.group_of[i] = g
                self._clock += 1
                self.stamp[i] = self._clock
            self._heaps.append([(0, self.stamp[i], i) for i in members])

    def set(self, replica: int, load: int) -> None:
        if load == self.load[replica]:
            return
        self._clock += 1
        self.load[replica], self.stamp[replica] = load, self._clock
        g = self.group_of[replica]
        heap = self._heaps[g]
        heappush(heap, (load, self._clock, replica))
        if len(heap) > 2 * self._sizes[g] + 16:  # drop the superseded entries
            heap[:] = [e for e in heap if self.stamp[e[2]] == e[1]]
            heapify(heap)

    def rank(self, replica: int) -> tuple[int, int]:
        """What orders replicas: (load, when it last changed)."""
        return self.load[replica], self.stamp[replica]

    def least(self, group: int, ok: Callable[[int], bool] | None = None) -> int:
        """The least loaded replica of the group that passes `ok` (all when None), or -1."""
        heap = self._heaps[group]
        stamp = self.stamp
        aside: list[tuple[int, int, int]] = []
        found = -1
        while heap:
            entry = heap[0]
            if stamp[entry[2]] != entry[1]:  # superseded
                heappop(heap)
                continue
            if ok is None or ok(entry[2]):
                found = entry[2]
                break
            aside.append(heappop(heap))
        for entry in aside:
            heappush(heap, entry)
        return found
