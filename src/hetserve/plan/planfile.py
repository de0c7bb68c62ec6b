"""The plan file: the contract between planning and running (simulator, gateway, deploy).

JSON, versioned (`version`), validated on load (docs/design.md, "The plan file"). A plan lists
its models (architecture, request classes, SLOs), the catalog rows of the accelerators it uses,
and replica groups: one deployment config (accelerator, TP, PP, dtype, engine limits) with a
replica count and the share of each of its model's request classes routed to it. A plan re-reads
and simulates on its own, without the catalog or model files it was made from.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from hetserve.catalog import Accelerator
from hetserve.errors import (
    HetserveError,
    Record,
    image_reference,
    load_json,
    validation_message,
    write_text,
)
from hetserve.models import Dtype, ModelSpec
from hetserve.perf import Deployment
from hetserve.perf.model import MAX_STEP_MARGIN, EngineName
from hetserve.plan.milp import MAX_REPLICAS
from hetserve.plan.serving import ENGINES, QUANTIZATION, flag, served_names

PLAN_VERSION = 3
READS = (2, 3)  # version 2 files load (to simulate and serve); deploy needs version 3's fields
SHARE_TOLERANCE = 1e-6  # shares of a class may miss 1 by this much (solver round-off)
PRICE_TOLERANCE = 1e-6  # relative

PositiveInt = Annotated[int, Field(ge=1)]
MAX_ENGINE_LIMIT = 1 << 24  # max_num_seqs, max_num_batched_tokens
Share = Annotated[float, Field(gt=0, le=1 + SHARE_TOLERANCE)]


class ClassSpec(Record):
    name: str = Field(min_length=1)
    input_range: tuple[PositiveInt, PositiveInt]
    output_range: tuple[PositiveInt, PositiveInt]
    rate: float = Field(ge=0, description="req/s the plan is sized for")
    mean_input: float = Field(gt=0)
    mean_output: float = Field(gt=0)
    burst: float = Field(default=1.0, ge=1.0, description="capacity planned per unit of rate "
                         "for this class's arrivals, burstier than Poisson")

    @model_validator(mode="after")
    def _ranges(self) -> ClassSpec:
        for label, (lo, hi) in (("input_range", self.input_range),
                                ("output_range", self.output_range)):
            if hi <= lo:
                raise ValueError(f"class {self.name}: {label} [{lo}, {hi}) is empty")
        return self


class SLOSpec(Record):
    ttft: float = Field(gt=0, description="time to first token limit (s) for the attainment share")
    tpot: float = Field(gt=0, description="per-output-token limit (s) for the attainment share")


class ModelEntry(Record):
    name: str = Field(min_length=1)
    spec: ModelSpec = Field(description="the architecture the plan was made for")
    workload: str
    rate: float = Field(gt=0)
    burst: float = Field(default=1.0, ge=1.0, description="the largest of its classes' burst "
                         "factors")
    attainment: float = Field(default=1.0, gt=0, le=1, description="share of requests planned "
                              "to meet the SLO")
    step_margin: float = Field(default=0.0, ge=0, le=MAX_STEP_MARGIN, description="capacities "
                               "planned as if every step took 1 + step_margin times the "
                               "modelled time; simulation applies it too")
    best_effort: list[str] = Field(default=[], description="classes served without a latency "
                                   "promise (together at most 1 - attainment of the requests)")
    dtype: Dtype
    slo: SLOSpec
    classes: list[ClassSpec] = Field(min_length=1)
    max_model_len: PositiveInt | None = Field(default=None, description="the longest request "
                                              "(prompt + output tokens) the engines accept")
    quantization: str | None = Field(default=None, description="the engines' --quantization "
                                     "for the weight dtype (none for bf16/fp16)")

    @property
    def context_limit(self) -> int:
        """The longest request (prompt + output tokens) its engines accept: max_model_len, else
        the model's context."""
        return self.max_model_len or self.spec.max_context

    @property
    def served_names(self) -> list[str]:
        """The names its engines serve (`--served-model-name`): the plan's name, then the Hugging
        Face id."""
        return served_names(self.name, self.spec.hf_id)


class ReplicaGroup(Record):
    id: str = Field(min_length=1)
    model: str
    accelerator: str
    tp: PositiveInt
    pp: PositiveInt
    dtype: Dtype
    engine: EngineName = Field(default="vllm", description="the serving engine planned for")
    devices_per_replica: PositiveInt
    replicas: int = Field(ge=1, le=MAX_REPLICAS)
    usd_per_hour: float = Field(gt=0, description="all replicas of the group")
    kv_tokens: PositiveInt = Field(description="KV cache of one replica, tokens")
    kv_dtype: Dtype = "bf16"
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_num_seqs: int = Field(ge=1, le=MAX_ENGINE_LIMIT)
    max_num_batched_tokens: int = Field(ge=1, le=MAX_ENGINE_LIMIT)
    shares: dict[str, Share] = Field(description="class name -> share of the class routed here")
    capacity: dict[str, Annotated[float, Field(ge=0)]] = Field(
        description="class name -> req/s of one replica (within the SLO; for a best-effort "
        "class, without it)")
    engine_version: str | None = Field(default=None, description="the engine release the "
                                       "command is written for")
    image: str | None = Field(default=None, description="container image of that release")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        try:
            return value if value is None else image_reference(value, "image")
        except HetserveError as exc:
            raise ValueError(str(exc).removeprefix("image: ")) from None
    command: list[str] | None = Field(default=None, description="the argv each replica starts "
                                      "with: model, parallelism, batch limits, memory share, "
                                      "context length (hetserve.plan.serving)")


Attained = dict[str, Annotated[float, Field(ge=0, le=1)]]
ATTAINED = ("per model: the simulated share of its requests within its SLO (each model must "
            "reach its own attainment target)")


class Baseline(Record):
    accelerator: str
    slo_attainment: float | None = Field(default=None, ge=0, le=1, description="simulated "
                                         "share of requests within the SLO (when proven)")
    model_attainment: Attained = Field(default={}, description=ATTAINED)
    usd_per_hour: float | None = Field(default=None, gt=0)
    scale: float | None = Field(default=None, ge=0)
    devices: int = Field(default=0, ge=0)
    reason: str = ""


class SolverInfo(Record):
    status: str
    bound: float = Field(description="proven bound on the objective: the least possible $/h "
                         "(cost plans) or the largest possible scale (throughput plans)")
    abs_gap: float = Field(ge=0, description="|objective - bound|, in $/h or scale")
    gap: float = Field(ge=0, description="abs_gap relative to the objective")
    seconds: float = Field(ge=0)
    configs: int = Field(ge=0)
    classes: int = Field(ge=0)


class Verification(Record):
    """Set by `plan --verify`: what simulating the plan on its workload measured."""

    slo_attainment: float = Field(ge=0, le=1, description="share of requests within both SLO "
                                  "limits")
    target: float = Field(gt=0, le=1)
    met: bool = Field(description="every model's attainment reached the target")
    model_attainment: Attained = Field(default={}, description=ATTAINED)
    rounds: PositiveInt
    chosen: PositiveInt = Field(description="the round whose plan this is")
    router: str
    derate: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default={}, description="the factors on modelled capacity this plan was solved with: "
        "config name, 'config name|class', or '*' (configs never simulated) -> factor")


class Plan(Record):
    kind: Literal["hetserve-plan"] = "hetserve-plan"
    version: Literal[2, 3] = PLAN_VERSION
    objective: Literal["cost", "throughput"]
    budget: float | None = Field(default=None, gt=0)
    available: dict[str, Annotated[int, Field(ge=0)]] = {}
    considered: list[str] = Field(default=[], description="accelerator types planning chose "
                                  "from (after --only)")
    models: list[ModelEntry] = Field(min_length=1)
    accelerators: list[Accelerator] = Field(description="catalog rows of the groups' types")
    groups: list[ReplicaGroup] = Field(min_length=1)
    usd_per_hour: float = Field(gt=0)
    scale: float = Field(gt=0, description="served multiple of the given rates (1 for cost "
                         "plans)")
    tokens_per_dollar: float = Field(ge=0)
    baselines: list[Baseline] = []
    best_homogeneous: str | None = None
    savings: float | None = Field(
        default=None,
        description="cost: 1 - cost / best homogeneous cost; throughput: scale / best - 1. "
        "When slo_attainment is set, only between plans that reach the attainment target in "
        "simulation (else null)",
    )
    slo_attainment: float | None = Field(default=None, ge=0, le=1, description="simulated "
                                         "share of requests within the SLO (when proven)")
    model_attainment: Attained = Field(default={}, description=ATTAINED)
    _baseline_plans: dict = PrivateAttr(default_factory=dict)

    @property
    def baseline_plans(self) -> dict[str, Plan]:
        """The homogeneous plans of `baselines`, by accelerator (kept in memory, not saved)."""
        return self._baseline_plans
    solver: SolverInfo
    verification: Verification | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        _unique("model", [m.name for m in self.models])
        _unique("group id", [g.id for g in self.groups])
        _unique("accelerator", [a.name for a in self.accelerators])
        models = {m.name: m for m in self.models}
        accs = {a.name: a for a in self.accelerators}
        for m in self.models:
            _unique(f"class of model {m.name}", [c.name for c in m.classes])
            unknown = sorted(set(m.best_effort) - {c.name for c in m.classes})
            if unknown:
                raise ValueError(f"model {m.name}: best_effort: unknown class {unknown[0]!r}")
        for g in self.groups:
            where = f"group {g.id}"
            if g.model not in models:
                raise ValueError(f"{where}: model {g.model!r} is not in the plan's models")
            if g.accelerator not in accs:
                raise ValueError(f"{where}: accelerator {g.accelerator!r} is not in the plan's "
                                 "accelerators")
            if g.devices_per_replica != g.tp * g.pp:
                raise ValueError(f"{where}: devices_per_replica {g.devices_per_replica} is not "
                                 f"tp x pp = {g.tp * g.pp}")
            price = g.replicas * g.devices_per_replica * accs[g.accelerator].usd_per_hour
            if not math.isclose(g.usd_per_hour, price, rel_tol=PRICE_TOLERANCE):
                raise ValueError(f"{where}: usd_per_hour {g.usd_per_hour:g} is not replicas x "
                                 f"devices x the {g.accelerator} price = {price:g}")
            classes = {c.name for c in models[g.model].classes}
            for field in ("shares", "capacity"):
                extra = sorted(set(getattr(g, field)) - classes)
                if extra:
                    raise ValueError(f"{where}: {field}: unknown class {extra[0]!r} of model "
                                     f"{g.model}")
            dep = self.deployment(g)
            problem = dep.why_not()
            if problem:
                raise ValueError(f"{where}: {dep.label} does not fit: {problem}")
            if g.kv_tokens > dep.kv_capacity_tokens:
                raise ValueError(f"{where}: kv_tokens {g.kv_tokens} exceed the "
                                 f"{dep.kv_capacity_tokens} that fit in {dep.label}")
            if g.command is not None:
                _check_command(g, where)
        missing = [gap for gap in self.deploy_gaps() if ".spec." not in gap]
        if self.version >= 3 and missing:
            raise ValueError(f"version {self.version}: missing {missing[0]}")
        for m in self.models:
            if m.quantization != QUANTIZATION[m.dtype] and m.max_model_len is not None:
                raise ValueError(f"model {m.name}: quantization {m.quantization!r} is not the "
                                 f"{QUANTIZATION[m.dtype]!r} of its dtype {m.dtype}")
        for where, attained in [("model_attainment", self.model_attainment)] + [
                (f"baseline {b.accelerator}: model_attainment", b.model_attainment)
                for b in self.baselines]:
            unknown = sorted(set(attained) - set(models))
            if unknown:
                raise ValueError(f"{where}: unknown model {unknown[0]!r}")
        total = sum(g.usd_per_hour for g in self.groups)
        if not math.isclose(self.usd_per_hour, total, rel_tol=PRICE_TOLERANCE):
            raise ValueError(f"usd_per_hour {self.usd_per_hour:g} is not the sum of the groups' "
                             f"{total:g}")
        for m in self.models:
            for c in m.classes:
                routed = sum(g.shares.get(c.name, 0.0) for g in self.groups if g.model == m.name)
                if c.rate > 0 and abs(routed - 1.0) > SHARE_TOLERANCE:
                    raise ValueError(f"model {m.name} class {c.name}: shares add up to "
                                     f"{routed:.6g}, expected 1")
        return self

    def deploy_gaps(self) -> list[str]:
        """What deploying needs and this plan lacks (a version 2 file has none of it)."""
        gaps = []
        for i, m in enumerate(self.models):
            if not m.spec.hf_id:
                gaps.append(f"models[{i}].spec.hf_id (the Hugging Face model id of {m.name})")
            if m.max_model_len is None:
                gaps.append(f"models[{i}].max_model_len")
        for i, g in enumerate(self.groups):
            for field in ("engine_version", "image", "command"):
                if getattr(g, field) is None:
                    gaps.append(f"groups[{i}].{field}")
        return gaps

    def short_of_target(self, overall: float | None, per_model: dict[str, float]
                        ) -> dict[str, float] | None:
        """Simulated attainment (overall, and per model where known) against the models'
        targets: per model that misses its target, its attainment ({}: all met; None: not
        simulated). Without per-model figures, the overall share against the strictest
        target."""
        if overall is None:
            return None
        if math.isnan(overall):  # a run without requests proves nothing
            return {"all models": overall}
        if per_model:  # nan (no requests of a model in the run) misses nothing
            return {m.name: per_model[m.name] for m in self.models
                    if per_model.get(m.name, 1.0) < m.attainment}
        target = min(m.attainment for m in self.models)
        return {"all models": overall} if overall < target else {}

    @property
    def misses(self) -> dict[str, float] | None:
        """This plan's models short of their attainment target in simulation (short_of_target)."""
        return self.short_of_target(self.slo_attainment, self.model_attainment)

    def model_entry(self, name: str) -> ModelEntry:
        return next(m for m in self.models if m.name == name)

    def planned_share(self, group: ReplicaGroup) -> float:
        """The share of its model's requests the plan sends to `group` (classes' rates x the
        group's shares)."""
        entry = self.model_entry(group.model)
        total = sum(c.rate for c in entry.classes) or 1.0
        return sum(c.rate * group.shares.get(c.name, 0.0) for c in entry.classes) / total

    def accelerator(self, group: ReplicaGroup) -> Accelerator:
        """The catalog row of the group's accelerator type."""
        return next(a for a in self.accelerators if a.name == group.accelerator)

    def deployment(self, group: ReplicaGroup, accelerator: Accelerator | None = None, *,
                   simulated: bool = False) -> Deployment:
        """The group's replica as the performance model sees it (on `accelerator` instead of
        the plan's row for it, when given). `simulated`: as simulations of the plan run it, its
        steps slower by its model's step_margin (what the plan's promise must hold with);
        else the model's own step times (what serving it expects)."""
        acc = accelerator or self.accelerator(group)
        entry = self.model_entry(group.model)
        return Deployment(entry.spec, acc, tp=group.tp, pp=group.pp,
                          dtype=group.dtype, kv_dtype=group.kv_dtype,
                          memory_utilisation=group.gpu_memory_utilization,
                          max_seqs=group.max_num_seqs, chunk_tokens=group.max_num_batched_tokens,
                          engine=group.engine,
                          step_margin=entry.step_margin if simulated else 0.0)

    def save(self, path: Path | str) -> None:
        write_text(path, self.model_dump_json(indent=2) + "\n")

    def to_dict(self) -> dict:
        return json.loads(self.model_dump_json())


# engine -> its flags for tensor and pipeline parallelism
PARALLEL_FLAGS = {"vllm": ("--tensor-parallel-size", "--pipeline-parallel-size"),
                  "vllm-v0": ("--tensor-parallel-size", "--pipeline-parallel-size"),
                  "sglang": ("--tp-size", "--pp-size"), "trt-llm": ("--tp_size", "--pp_size")}


def _check_command(g: ReplicaGroup, where: str) -> None:
    """A group's command must run the parallelism the plan priced (its other flags are the
    user's to tune)."""
    if not g.command:
        raise ValueError(f"{where}: command: expected the engine's argv, got an empty list")
    for name, field in zip(PARALLEL_FLAGS[g.engine], ("tp", "pp"), strict=True):
        given, value = flag(g.command, name), getattr(g, field)
        if given != str(value):
            raise ValueError(f"{where}: command: {name} is {given}, expected the group's "
                             f"{field} {value}")
    if g.engine_version is None or g.engine not in ENGINES:
        raise ValueError(f"{where}: command given without engine_version")


def best_baseline(objective: str, usd_per_hour: float, scale: float,
                  baselines: list[Baseline]) -> tuple[str | None, float | None]:
    """The best of `baselines` (feasible ones only) and the plan's saving against it: 1 - cost
    / its cost (cost plans) or scale / its scale - 1 (throughput); (None, None) if none."""
    feasible = [b for b in baselines if b.usd_per_hour is not None]
    if not feasible:
        return None, None
    if objective == "cost":
        top = min(feasible, key=lambda b: b.usd_per_hour)
        return top.accelerator, 1.0 - usd_per_hour / top.usd_per_hour
    top = max(feasible, key=lambda b: b.scale)
    return top.accelerator, scale / top.scale - 1.0


def _unique(what: str, names: list[str]) -> None:
    twice = [n for n, k in Counter(names).items() if k > 1]
    if twice:
        raise ValueError(f"{what} {twice[0]!r} appears twice")


def load_plan(path: Path | str) -> Plan:
    return parse_plan(load_json(path), str(path))


def parse_plan(data, path: str) -> Plan:
    """A plan from its JSON data; errors name `path` (a file, or where the data came from)."""
    if not isinstance(data, dict):
        raise HetserveError(f"{path}: expected a JSON object: a plan file written by hetserve "
                            "plan --out")
    if data.get("kind") != "hetserve-plan":
        found = f"kind {data['kind']!r}" if "kind" in data else "no 'kind' field"
        raise HetserveError(f"{path}: not a hetserve plan file ({found}); write one with "
                            "hetserve plan --out")
    if data.get("version") not in READS:
        raise HetserveError(f"{path}: plan file version {data.get('version')!r} is not "
                            f"supported (this hetserve reads versions "
                            f"{', '.join(map(str, READS))}): re-run hetserve plan to write it "
                            "again")
    try:
        return Plan.model_validate(data)
    except ValidationError as err:
        raise HetserveError(validation_message(err, str(path))) from None
