"""The plan file: the contract between planning and running (simulator, gateway, deploy).

JSON, versioned (`version`), validated on load. A plan lists models (with their request classes
and SLOs) and replica groups: one deployment config (accelerator, TP, PP, dtype) with a replica
count and the share of each of its model's request classes routed to it. Shares of a class
across the groups of its model add up to 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hetserve.errors import HetserveError, load_json, validation_message

PLAN_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassSpec(_Strict):
    name: str
    input_range: tuple[int, int]
    output_range: tuple[int, int]
    rate: float = Field(ge=0, description="req/s the plan is sized for")
    mean_input: float
    mean_output: float


class SLOSpec(_Strict):
    ttft: float = Field(gt=0, description="p90 time to first token, s")
    tpot: float = Field(gt=0, description="p90 time per output token, s")


class ModelEntry(_Strict):
    name: str
    workload: str
    rate: float
    dtype: str
    slo: SLOSpec
    classes: list[ClassSpec]


class ReplicaGroup(_Strict):
    id: str
    model: str
    accelerator: str
    tp: int = Field(ge=1)
    pp: int = Field(ge=1)
    dtype: str
    devices_per_replica: int = Field(ge=1)
    replicas: int = Field(ge=1)
    usd_per_hour: float = Field(ge=0, description="all replicas of the group")
    kv_tokens: int = Field(ge=0, description="KV cache of one replica, tokens")
    kv_dtype: str = "bf16"
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_num_seqs: int
    max_num_batched_tokens: int
    shares: dict[str, float] = Field(description="class name -> share of the class routed here")
    capacity: dict[str, float] = Field(description="class name -> req/s of one replica")


class Baseline(_Strict):
    accelerator: str
    usd_per_hour: float | None = None
    scale: float | None = None
    devices: int = 0
    reason: str = ""


class SolverInfo(_Strict):
    status: str
    gap: float
    seconds: float
    configs: int
    classes: int


class Verification(_Strict):
    """Set by `plan --verify`: what simulating the plan on its workload measured."""

    slo_attainment: float = Field(description="share of requests within both SLO limits")
    target: float
    rounds: int
    chosen: int = Field(description="the round whose plan this is")
    router: str
    derate: dict[str, float] = Field(
        default={}, description="config -> factor its modelled capacity was lowered by")


class Plan(_Strict):
    kind: Literal["hetserve-plan"] = "hetserve-plan"
    version: int = PLAN_VERSION
    objective: Literal["cost", "throughput"]
    budget: float | None = None
    available: dict[str, int] = {}
    models: list[ModelEntry]
    groups: list[ReplicaGroup]
    usd_per_hour: float
    scale: float = Field(description="served multiple of the given rates (1 for cost plans)")
    tokens_per_dollar: float
    baselines: list[Baseline] = []
    best_homogeneous: str | None = None
    savings: float | None = Field(
        default=None,
        description="cost: 1 - cost / best homogeneous cost; throughput: scale / best - 1",
    )
    solver: SolverInfo
    verification: Verification | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        if self.version != PLAN_VERSION:
            raise ValueError(f"plan version {self.version} is not supported (expected "
                             f"{PLAN_VERSION})")
        names = {m.name: {c.name for c in m.classes} for m in self.models}
        for g in self.groups:
            if g.model not in names:
                raise ValueError(f"group {g.id} names unknown model {g.model}")
            extra = set(g.shares) - names[g.model]
            if extra:
                raise ValueError(f"group {g.id}: unknown class {sorted(extra)[0]}")
        return self

    def save(self, path: Path | str) -> None:
        Path(path).write_text(self.model_dump_json(indent=2) + "\n")

    def to_dict(self) -> dict:
        return json.loads(self.model_dump_json())


def load_plan(path: Path | str) -> Plan:
    data = load_json(path)
    try:
        return Plan.model_validate(data)
    except ValidationError as err:
        raise HetserveError(validation_message(err, str(path))) from None
