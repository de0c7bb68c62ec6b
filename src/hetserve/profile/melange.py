"""Mélange's throughput matrices as profiles.

Mélange (Griggs et al., arXiv 2404.14527) profiles each GPU as a matrix of the most requests
per second it serves within an SLO, per (prompt size, output size) bucket; its solver input
keeps them under `gpu_info.NAME.tputs`. Importing one GPU's matrix gives a profile whose
capacity points are the entries (each bucket's representative size: the middle of its edges)
and whose fit is the step-time coefficients under which hetserve's capacity model gives those
rates, so that the measured numbers drive every plan, not only Mélange's own grid.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from hetserve.errors import HetserveError, load_record
from hetserve.perf import Deployment
from hetserve.plan.interop import MelangeInput
from hetserve.profile.file import CapacityPoint, Profile
from hetserve.profile.fit import fit, observations


def import_melange(path: Path | str, gpu: str, dep: Deployment, input_edges: Sequence[int],
                   output_edges: Sequence[int], ttft: float | None, tpot: float | None,
                   quantile: float = 0.5, hold_back: float = 0.25) -> Profile:
    """A fitted profile of `dep` from `gpu`'s matrix in Mélange input file `path`."""
    points = melange_points(path, gpu, input_edges, output_edges, ttft, tpot, quantile)
    prof = Profile(model=dep.model.name, spec=dep.model, accelerator=dep.accelerator.name,
                   tp=dep.tp, pp=dep.pp, engine=dep.engine, dtype=dep.weight_dtype,
                   max_num_seqs=dep.max_seqs, max_num_batched_tokens=dep.chunk_tokens,
                   endpoint=f"{path} (Mélange gpu_info.{gpu}.tputs)", prompts="imported",
                   measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   capacities=points)
    prof.fit, prof.fit_report = fit(dep, observations([], points), hold_back)
    return prof


def melange_points(path: Path | str, gpu: str, input_edges: Sequence[int],
                   output_edges: Sequence[int], ttft: float | None, tpot: float | None,
                   quantile: float = 0.5) -> list[CapacityPoint]:
    """`gpu`'s matrix in Mélange input file `path` as capacity points (validated)."""
    data = load_record(path, MelangeInput)
    if gpu not in data.gpu_info:
        raise HetserveError(f"{path}: gpu_info has no {gpu!r} (it has "
                            f"{', '.join(data.gpu_info)}); name one with --gpu")
    tputs = data.gpu_info[gpu].tputs
    if tputs is None:
        raise HetserveError(f"{path}: gpu_info.{gpu} has no tputs matrix")
    rows, cols = len(tputs), len(tputs[0])
    if len(input_edges) != rows + 1 or len(output_edges) != cols + 1:
        raise HetserveError(f"--input-edges/--output-edges: {path}'s matrix is {rows} x {cols} "
                            f"buckets, so expected {rows + 1} and {cols + 1} edges, got "
                            f"{len(input_edges)} and {len(output_edges)}")
    if any(b <= a for a, b in zip(input_edges[:-1], input_edges[1:], strict=True)) or any(
            b <= a for a, b in zip(output_edges[:-1], output_edges[1:], strict=True)):
        raise HetserveError("--input-edges/--output-edges: expected increasing token counts")
    return [CapacityPoint(input_tokens=(input_edges[i] + input_edges[i + 1]) // 2,
                          output_tokens=(output_edges[j] + output_edges[j + 1]) // 2,
                          rate=float(tputs[i][j]), ttft=ttft, tpot=tpot, quantile=quantile)
            for i in range(rows) for j in range(cols)]
