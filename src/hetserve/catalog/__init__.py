"""Accelerator catalog: specs, prices, availability and the performance model's efficiency factors.

The bundled catalog (data/accelerators.yaml) holds every row of the project's reference table.
Users extend it with their own file (new rows need every field; rows that name a bundled
accelerator override only the fields they give), override prices, and state availability.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError

from hetserve.errors import HetserveError, Record, load_yaml, lookup, validation_message

MIN_PRICE = 1e-4  # $/h per device: less is a typo (or a unit slip), and plans go absurd
MAX_PRICE = 1e5  # $/h per device

__all__ = [
    "Accelerator",
    "Fit",
    "Offer",
    "TargetNames",
    "Catalog",
    "load_catalog",
    "parse_assignments",
    "apply_available",
    "parse_names",
]


class Fit(Record):
    """Step-time coefficients measured for one deployment of a model on this accelerator (a
    profile's fit, `hetserve profile`): where a deployment matches model, TP, PP, engine and
    weight dtype, they replace the accelerator's efficiencies and step overhead and the
    engine's host time per sequence, in the closed form and the simulator alike."""

    model_config = ConfigDict(frozen=True)

    model: str = Field(min_length=1, description="model name, as the model registry has it")
    tp: int = Field(ge=1)
    pp: int = Field(default=1, ge=1)
    engine: str = Field(min_length=1)
    dtype: str = Field(min_length=1, description="weight dtype")
    eta_compute: float = Field(gt=0, le=1)
    eta_memory: float = Field(gt=0, le=1)
    step_overhead_ms: float = Field(ge=0)
    seq_host_us: float = Field(ge=0, description="host time per sequence per step, us")
    source: str = Field(default="", description="the profile it came from")

    def matches(self, model: str, tp: int, pp: int, engine: str, dtype: str) -> bool:
        return (self.model, self.tp, self.pp, self.engine, self.dtype) == (
            model, tp, pp, engine, dtype)


class TargetNames(Record):
    """What the accelerator is called on each deploy target (data/targets.yaml documents the
    labels and their sources); None where a target does not offer it."""

    model_config = ConfigDict(frozen=True)

    gke: str | None = Field(default=None, description="cloud.google.com/gke-accelerator")
    eks: str | None = Field(default=None, description="karpenter.k8s.aws/instance-gpu-name")
    eks_memory_mib: int | None = Field(default=None, gt=0, description="karpenter.k8s.aws/"
                                       "instance-gpu-memory, where the name covers two sizes")
    aks: dict[int, str] = Field(default={}, description="GPUs per VM -> Azure VM size "
                                "(node.kubernetes.io/instance-type)")
    gfd: str | None = Field(default=None, description="nvidia.com/gpu.product (GPU feature "
                            "discovery)")
    skypilot: str | None = None
    ray: str | None = Field(default=None, description="Ray accelerator_type")
    device_resource: str = Field(default="nvidia.com/gpu", description="the Kubernetes "
                                 "extended resource a pod requests per device")

    def __hash__(self) -> int:  # (aks is a dict) an Accelerator keys caches
        return hash(self.model_dump_json())


class Offer(Record):
    """One cloud instance type that carries this accelerator (hetserve catalog
    --import-skypilot)."""

    model_config = ConfigDict(frozen=True)

    cloud: str = Field(min_length=1)
    region: str = Field(min_length=1)
    instance_type: str = Field(min_length=1)
    gpus: int = Field(ge=1, description="accelerators in one instance")
    usd_per_hour: float = Field(ge=MIN_PRICE, le=MAX_PRICE * 64,
                                description="the whole instance, on demand")
    spot_usd_per_hour: float | None = Field(default=None, ge=MIN_PRICE, le=MAX_PRICE * 64,
                                            description="the whole instance, spot")


class Accelerator(Record):
    """One accelerator type (a GPU, or a CPU instance) as the planner rents it."""

    model_config = ConfigDict(frozen=True, strict=True)  # numbers are numbers, not true/"3"

    name: str = Field(min_length=1)
    kind: Literal["gpu", "cpu"]
    memory_gb: float = Field(gt=0, description="device memory as sold, GiB")
    memory_bw_gbs: float = Field(gt=0, description="peak memory bandwidth, GB/s")
    bf16_tflops: float = Field(gt=0, description="dense BF16/FP16 tensor peak, TFLOPS")
    fp8_tflops: float | None = Field(default=None, gt=0, description="dense FP8 peak, if any")
    link: str = Field(description="intra-node interconnect")
    link_gbs: float = Field(ge=0, description="intra-node link bandwidth per direction, GB/s")
    allreduce_us: float = Field(ge=0, description="latency of one small all-reduce, us")
    max_per_node: int = Field(ge=1, description="most devices in one node (TP limit)")
    tdp_watts: float | None = Field(default=None, gt=0)
    usd_per_hour: float = Field(ge=MIN_PRICE, le=MAX_PRICE,
                                description="price of one device per hour")
    eta_compute: float = Field(gt=0, le=1)
    eta_memory: float = Field(gt=0, le=1)
    step_overhead_ms: float = Field(ge=0)
    ecc_reserved: float = Field(default=0.0, ge=0, lt=1, description="share kept for ECC")
    notes: str = ""
    fits: tuple[Fit, ...] = Field(default=(), strict=False,  # a list from YAML or JSON
                                  description="measured deployments (profiles)")
    names: TargetNames = Field(default=TargetNames(), strict=False,
                               description="its names on deploy targets")
    spot_usd_per_hour: float | None = Field(default=None, ge=MIN_PRICE, le=MAX_PRICE,
                                            description="spot price of one device per hour, "
                                            "where known")
    offers: tuple[Offer, ...] = Field(default=(), strict=False, description="instance types "
                                      "that carry it (from a cloud catalog)")

    def offer_for(self, devices: int) -> Offer | None:
        """The instance a replica of `devices` accelerators runs on: the cheapest per device
        of those with exactly that many, else of the smallest that hold it."""
        fitting = [o for o in self.offers if o.gpus >= devices]
        if not fitting:
            return None
        least = min(o.gpus for o in fitting)
        size = devices if any(o.gpus == devices for o in fitting) else least
        return min((o for o in fitting if o.gpus == size), key=lambda o: o.usd_per_hour)

    def with_fit(self, fit: Fit) -> Accelerator:
        """A copy carrying `fit`, in place of any earlier fit of the same deployment."""
        kept = tuple(f for f in self.fits
                     if not f.matches(fit.model, fit.tp, fit.pp, fit.engine, fit.dtype))
        return self.model_copy(update={"fits": (*kept, fit)})

    def fit_for(self, model: str, tp: int, pp: int, engine: str, dtype: str) -> Fit | None:
        """The measured coefficients of that deployment, if a profile gave them."""
        return next((f for f in self.fits if f.matches(model, tp, pp, engine, dtype)), None)

    @property
    def memory_bytes(self) -> float:
        """Memory the driver offers to applications."""
        return self.memory_gb * 2**30 * (1.0 - self.ecc_reserved)

    def peak_flops(self, fp8: bool = False) -> float:
        """Dense peak in FLOP/s; FP8 peak where the device has FP8 tensor cores and fp8 is asked."""
        tflops = self.fp8_tflops if (fp8 and self.fp8_tflops) else self.bf16_tflops
        return tflops * 1e12


class Catalog:
    """Accelerators by name, with availability (None: no stated limit)."""

    def __init__(
        self, accelerators: Iterable[Accelerator], available: Mapping[str, int] | None = None
    ) -> None:
        self.accelerators: dict[str, Accelerator] = {a.name: a for a in accelerators}
        self.available: dict[str, int] = {}
        for name, count in (available or {}).items():
            self.available[self.get(name).name] = int(count)

    def __iter__(self):
        return iter(self.accelerators.values())

    def __len__(self) -> int:
        return len(self.accelerators)

    def get(self, name: str) -> Accelerator:
        return lookup("accelerator", name, self.accelerators)

    def availability(self, name: str) -> int | None:
        return self.available.get(self.get(name).name)

    def with_prices(self, prices: Mapping[str, float]) -> Catalog:
        """A copy with the given prices ($/h per device) replaced."""
        updated = dict(self.accelerators)
        for name, price in prices.items():
            try:
                acc = self.get(name)
            except HetserveError as exc:
                raise HetserveError(f"--price: {exc}") from None
            if isinstance(price, bool) or not isinstance(price, int | float) \
                    or not MIN_PRICE <= price <= MAX_PRICE:
                raise HetserveError(f"--price {name}: expected a price from {MIN_PRICE:g} to "
                                    f"{MAX_PRICE:g} $/h per device, got {price!r}")
            updated[acc.name] = acc.model_copy(update={"usd_per_hour": float(price)})
        return Catalog(updated.values(), self.available)

    def with_availability(self, available: Mapping[str, int]) -> Catalog:
        """A copy with availability counts set (accelerators not named stay as they were)."""
        merged = dict(self.available)
        for name, count in available.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise HetserveError(f"--available {name}: expected a count >= 0, got {count!r}")
            merged[self.get(name).name] = int(count)
        return Catalog(self.accelerators.values(), merged)

    def with_fits(self, fits: Iterable[tuple[str, Fit]]) -> Catalog:
        """A copy whose accelerators carry these (accelerator name, Fit) pairs; a later fit of
        the same deployment replaces an earlier one."""
        updated = dict(self.accelerators)
        for name, fit in fits:
            acc = updated[self.get(name).name]
            updated[acc.name] = acc.with_fit(fit)
        return Catalog(updated.values(), self.available)

    def only(self, names: Iterable[str]) -> Catalog:
        """A copy restricted to the named accelerators."""
        try:
            keep = {self.get(n).name for n in names}
        except HetserveError as exc:
            raise HetserveError(f"--only: {exc}") from None
        if not keep:
            raise HetserveError("--only: expected at least one accelerator name")
        return Catalog(
            [a for a in self if a.name in keep],
            {n: c for n, c in self.available.items() if n in keep},
        )


CATALOG_VERSION = 1


def _only_listed(path: Path) -> bool:
    """Whether a catalog file limits planning to the accelerators it lists (top-level
    `only: true`, as an imported cloud catalog does: the types that cloud offers)."""
    data = load_yaml(path)
    only = data.get("only", False) if isinstance(data, dict) else False
    if not isinstance(only, bool):
        raise HetserveError(f"{path}: only: expected true or false, got {only!r}")
    return only


def _rows_from_file(path: Path) -> list[dict]:
    data = load_yaml(path)
    if isinstance(data, dict):
        unknown = [str(k) for k in data if k not in ("version", "only", "accelerators")]
        if unknown:
            raise HetserveError(f"{path}: unknown field '{unknown[0]}' (expected version, only "
                                "and accelerators)")
        if data.get("version", CATALOG_VERSION) != CATALOG_VERSION:
            raise HetserveError(f"{path}: catalog version {data['version']!r} is not supported "
                                f"(this hetserve reads version {CATALOG_VERSION})")
    rows = data.get("accelerators") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise HetserveError(f"{path}: expected a list of accelerators (key 'accelerators')")
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str) or not row["name"]:
            raise HetserveError(f"{path}: accelerators[{i}]: expected a mapping with a 'name'")
        first = seen.setdefault(row["name"].lower(), i)
        if first != i:
            raise HetserveError(f"{path}: accelerators[{first}] '{rows[first]['name']}' and "
                                f"accelerators[{i}] '{row['name']}' name the same accelerator "
                                "(give each once)")
    return rows


def _build(rows: list[dict], where: str) -> list[Accelerator]:
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(Accelerator(**row))
        except ValidationError as err:
            label = f"{where}: accelerator '{row.get('name', i)}'"
            raise HetserveError(validation_message(err, label)) from None
    return out


def bundled_rows() -> list[dict]:
    """The bundled accelerators, each with its names on deploy targets (data/targets.yaml)."""
    data = resources.files("hetserve.catalog") / "data"
    names = load_yaml(Path(str(data / "targets.yaml")))["targets"]
    return [{**row, "names": names.get(row["name"], {})}
            for row in _rows_from_file(Path(str(data / "accelerators.yaml")))]


def load_catalog(
    extra: Path | str | None = None,
    prices: Mapping[str, float] | None = None,
    available: Mapping[str, int] | None = None,
) -> Catalog:
    """The bundled catalog, extended/overridden by `extra` (only the accelerators it lists where
    it says `only: true`), then prices and availability applied."""
    rows = {r["name"]: dict(r) for r in bundled_rows()}
    lower = {name.lower(): name for name in rows}
    listed = []
    if extra is not None:
        for row in _rows_from_file(Path(extra)):
            known = lower.get(str(row["name"]).lower())
            if known:  # override the fields given
                rows[known] = {**rows[known], **row, "name": known}
            else:  # a new accelerator: every field is required
                rows[row["name"]] = row
                lower[str(row["name"]).lower()] = row["name"]
            listed.append(lower[str(row["name"]).lower()])
    cat = Catalog(_build(list(rows.values()), str(extra) if extra else "bundled catalog"))
    if extra is not None and _only_listed(Path(extra)):
        if not listed:
            raise HetserveError(f"{extra}: only: true, but the file lists no accelerators")
        cat = cat.only(listed)
    if prices:
        cat = cat.with_prices(prices)
    if available:
        cat = cat.with_availability(available)
    return cat


def parse_assignments(items: Iterable[str], option: str, cast=float) -> dict[str, float]:
    """Parse repeated/comma-separated NAME=VALUE options (e.g. --price A10G=0.9,L4=0.7)."""
    out: dict[str, float] = {}
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise HetserveError(f"{option} '{part}': expected NAME=VALUE")
            kind = "an integer" if cast is int else "a finite number"
            try:
                number = cast(value.strip())
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise HetserveError(f"{option} '{part}': expected {kind} after '='")
            twice = next((n for n in out if n.lower() == name.strip().lower()), None)
            if twice is not None:
                raise HetserveError(f"{option}: '{name.strip()}' given twice ({twice}="
                                    f"{out[twice]:g} and {part}); give each name once")
            out[name.strip()] = number
    return out


def apply_available(catalog: Catalog, items: Iterable[str]) -> Catalog:
    """The catalog with --available values applied: NAME=COUNT,... or a YAML/JSON file of
    NAME: COUNT (later ones win); an unknown name is an error naming the file or option."""
    for item in items:
        if "=" not in item and (Path(item).exists() or item.endswith((".yaml", ".yml", ".json"))):
            counts, where = load_availability(item), str(item)
        else:
            counts, where = parse_assignments([item], "--available", int), f"--available {item}"
        try:
            catalog = catalog.with_availability(counts)
        except HetserveError as exc:
            raise HetserveError(f"{where}: {exc}") from None
    return catalog


def parse_names(items: Iterable[str] | None, option: str) -> list[str] | None:
    """Comma-separated or repeated names (e.g. --only A10G,L4); None when none are given."""
    if not items:
        return None
    names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    if not names:
        raise HetserveError(f"{option}: expected at least one name")
    return names


def load_availability(path: Path | str) -> dict[str, int]:
    """Availability from a YAML/JSON file: a mapping NAME: COUNT."""
    data = load_yaml(Path(path))
    if not isinstance(data, dict):
        raise HetserveError(f"{path}: expected a mapping of accelerator name to count")
    out = {}
    for name, count in data.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise HetserveError(f"{path}: '{name}': expected a count >= 0, got {count!r}")
        out[str(name)] = count
    return out
