"""Prices and instance types from a SkyPilot cloud catalog (`hetserve catalog --import-skypilot`).

SkyPilot publishes one `vms.csv` per cloud (~/.sky/catalogs/<version>/<cloud>/vms.csv): one row
per instance type and availability zone, with columns InstanceType, AcceleratorName,
AcceleratorCount, Price and SpotPrice (the whole instance, $/h), Region and, on most clouds,
AvailabilityZone and GpuInfo. `read_vms_csv` turns the rows whose AcceleratorName is some catalog
accelerator's `names.skypilot` into `Offer`s and per-device prices; `to_catalog_yaml` writes them
as a catalog override file for `--catalog`.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import yaml

from hetserve.catalog import Accelerator, Catalog, Offer, load_catalog
from hetserve.errors import HetserveError, read_text

__all__ = ["CLOUDS", "Imported", "ImportResult", "cloud_for", "name_counts", "read_vms_csv",
           "to_catalog_yaml"]

# SkyPilot's catalog folders (one per cloud): a CSV in one of them names its cloud
CLOUDS = ("aws", "azure", "cudo", "do", "fluidstack", "gcp", "hyperbolic", "ibm", "lambda",
          "nebius", "oci", "paperspace", "runpod", "scp", "vast", "vsphere")
REQUIRED = ("InstanceType", "AcceleratorName", "AcceleratorCount", "Price", "Region")
# why rows were left out (ImportResult.skipped keys)
NO_ACCELERATOR = "CPU instance"
OTHER_REGION = "other region"
FRACTIONAL = "fractional AcceleratorCount"  # a share of one GPU
NO_PRICE = "no price"
_SIZE_MIB = re.compile(r"['\"]SizeInMiB['\"]\s*:\s*([0-9.]+)")


@dataclass(frozen=True)
class Imported:
    """One catalog accelerator's prices from the file: the cheapest per device on demand (and
    the offer giving it), the cheapest per device on spot, and every offer found."""

    name: str
    skypilot: str
    usd_per_hour: float
    spot_usd_per_hour: float | None
    cheapest: Offer
    offers: tuple[Offer, ...]


@dataclass(frozen=True)
class ImportResult:
    """What `read_vms_csv` found: the imported accelerators (catalog order), the SkyPilot names
    no catalog accelerator carries (with their row counts) and the rows left out, by reason."""

    path: str
    cloud: str
    region: str | None
    rows: int
    imported: tuple[Imported, ...]
    unmapped: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "file": self.path, "cloud": self.cloud, "region": self.region, "rows": self.rows,
            "accelerators": [
                {"name": i.name, "skypilot": i.skypilot, "usd_per_hour": i.usd_per_hour,
                 "spot_usd_per_hour": i.spot_usd_per_hour,
                 "instance_type": i.cheapest.instance_type, "gpus": i.cheapest.gpus,
                 "region": i.cheapest.region,
                 "offers": [o.model_dump() for o in i.offers]} for i in self.imported],
            "unmapped": self.unmapped, "skipped": self.skipped,
        }


def name_counts(counts: dict[str, int]) -> str:
    """'Inferentia (2 rows), Trainium (1 row)'."""
    return ", ".join(f"{n} ({c} row{'' if c == 1 else 's'})" for n, c in counts.items())


def cloud_for(path: Path | str, cloud: str | None = None) -> str:
    """The cloud the CSV describes: `cloud` if given, else its folder's name when that is one of
    SkyPilot's cloud folders (…/aws/vms.csv), else a HetserveError asking for --cloud."""
    if cloud is not None:
        if not cloud.strip():
            raise HetserveError("--cloud: expected a cloud name, e.g. aws")
        return cloud.strip()
    folder = Path(path).resolve().parent.name.lower()
    if folder in CLOUDS:
        return folder
    raise HetserveError(f"{path}: cannot tell the cloud from folder '{folder}' (not one of "
                        f"{', '.join(CLOUDS)}): give --cloud")


def _number(text: str | None, where: str, column: str) -> float | None:
    """A price or count: None when empty, else a finite number >= 0 (else a HetserveError)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise HetserveError(f"{where}: column '{column}': expected a number >= 0, got {text!r}")
    return value


def _memory_gib(gpu_info: str | None) -> float | None:
    """One device's memory from GpuInfo's MemoryInfo SizeInMiB, in GiB (values under 1024 are
    taken as GiB already: some catalogs write GiB there); None when absent."""
    found = _SIZE_MIB.search(gpu_info or "")
    if not found:
        return None
    try:
        size = float(found[1])
    except ValueError:
        return None
    return size / 1024 if size >= 1024 else size if size > 0 else None


def _target(candidates: list[Accelerator], memory_gib: float | None) -> Accelerator:
    """Of the catalog types sharing one SkyPilot name, the one whose memory is closest to the
    row's GpuInfo; without GpuInfo (or on a tie) the first in catalog order."""
    if memory_gib is None:
        return candidates[0]
    return min(candidates, key=lambda a: abs(a.memory_gb - memory_gib))


def read_vms_csv(path: Path | str, cloud: str | None, region: str | None = None,
                 catalog: Catalog | None = None) -> ImportResult:
    """Read a SkyPilot vms.csv: for each accelerator of `catalog` (default: the bundled one)
    whose `names.skypilot` is a row's AcceleratorName, one `Offer` per instance type and region
    (the cheapest zone's on-demand and spot prices, each the lowest the zones give), and the
    cheapest per-device price on demand (Price / AcceleratorCount) and on spot among them.
    `cloud` None: the CSV's folder names it (`cloud_for`).

    A name several catalog types share (H100: H100-SXM and H100-PCIe, both 80 GiB) goes to the
    one whose memory is closest to GpuInfo's SizeInMiB, else to the first in catalog order
    (H100-SXM, which is what SkyPilot's H100 instances on AWS, GCP and Azure carry). Rows with
    `region` given go in only from that region (case-insensitive). Left out and counted: CPU
    rows, other regions, fractional AcceleratorCount (a shared GPU) and rows without a price.
    A malformed file, a `region` without rows, or no row for any catalog accelerator is a
    HetserveError naming the file (and line and column)."""
    path = Path(path)
    text = read_text(path).removeprefix("\ufeff")
    cloud = cloud_for(path, cloud)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise HetserveError(f"{path}: line 1: not valid CSV ({exc})") from None
    if not header:
        raise HetserveError(f"{path}: empty file, expected a SkyPilot vms.csv header line")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise HetserveError(f"{path}: line 1: missing column '{missing[0]}' (a SkyPilot vms.csv "
                            f"has {', '.join(REQUIRED)}; found {', '.join(header)})")
    catalog = catalog if catalog is not None else load_catalog()
    by_name: dict[str, list[Accelerator]] = {}
    for acc in catalog:
        if acc.names.skypilot:
            by_name.setdefault(acc.names.skypilot.lower(), []).append(acc)

    want = region.strip().lower() if region is not None else None
    regions: set[str] = set()
    rows = 0
    skipped: Counter[str] = Counter()
    unmapped: Counter[str] = Counter()
    # (accelerator, instance type, region) -> [gpus, cheapest price, cheapest spot]
    found: dict[tuple[str, str, str], list] = {}
    skynames: dict[str, str] = {}
    try:
        for row in reader:
            rows += 1
            where = f"{path}: line {reader.line_num}"
            if None in row:
                raise HetserveError(f"{where}: {len(header) + len(row[None])} fields, the "
                                    f"header has {len(header)}")
            price = _number(row["Price"], where, "Price")
            spot = _number(row.get("SpotPrice"), where, "SpotPrice")
            count = _number(row["AcceleratorCount"], where, "AcceleratorCount")
            name = (row["AcceleratorName"] or "").strip()
            place = (row["Region"] or "").strip()
            if place:
                regions.add(place)
            if not name:
                skipped[NO_ACCELERATOR] += 1
                continue
            if want is not None and place.lower() != want:
                skipped[OTHER_REGION] += 1
                continue
            if not count:
                raise HetserveError(f"{where}: column 'AcceleratorCount': expected a count > 0 "
                                    f"for accelerator {name}, got {row['AcceleratorCount']!r}")
            if count != int(count):
                skipped[FRACTIONAL] += 1
                continue
            candidates = by_name.get(name.lower())
            if not candidates:
                unmapped[name] += 1
                continue
            if not price:
                skipped[NO_PRICE] += 1
                continue
            instance = (row["InstanceType"] or "").strip()
            for column, value in (("InstanceType", instance), ("Region", place)):
                if not value:
                    raise HetserveError(f"{where}: column '{column}': empty, expected a value "
                                        f"for accelerator {name}")
            acc = _target(candidates, _memory_gib(row.get("GpuInfo")))
            skynames[acc.name] = name
            entry = found.setdefault((acc.name, instance, place), [int(count), price, None])
            entry[1] = min(entry[1], price)
            if spot:  # an empty or zero spot price: no spot offer
                entry[2] = spot if entry[2] is None else min(entry[2], spot)
    except csv.Error as exc:
        raise HetserveError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None

    if want is not None and want not in {r.lower() for r in regions}:
        raise HetserveError(f"{path}: no rows in region '{region}'; regions in the file: "
                            f"{', '.join(sorted(regions)) or 'none'}")
    offers: dict[str, list[Offer]] = {}
    for (name, instance, place), (gpus, price, spot) in found.items():
        offers.setdefault(name, []).append(Offer(
            cloud=cloud, region=place, instance_type=instance, gpus=gpus, usd_per_hour=price,
            spot_usd_per_hour=spot))
    imported = []
    for acc in catalog:
        own = sorted(offers.get(acc.name, []), key=lambda o: (o.region, o.gpus, o.instance_type))
        if not own:
            continue
        cheapest = min(own, key=lambda o: (o.usd_per_hour / o.gpus, o.gpus))
        spots = [o.spot_usd_per_hour / o.gpus for o in own if o.spot_usd_per_hour]
        imported.append(Imported(
            name=acc.name, skypilot=skynames[acc.name],
            usd_per_hour=cheapest.usd_per_hour / cheapest.gpus,
            spot_usd_per_hour=min(spots) if spots else None, cheapest=cheapest,
            offers=tuple(own)))
    if not imported:
        seen = name_counts(dict(sorted(unmapped.items()))) or "none"
        scope = f" in region '{region}'" if region is not None else ""
        raise HetserveError(f"{path}: no priced row{scope} names a catalog accelerator's "
                            f"SkyPilot name; other accelerator names: {seen}")
    return ImportResult(path=str(path), cloud=cloud, region=region, rows=rows,
                        imported=tuple(imported), unmapped=dict(sorted(unmapped.items())),
                        skipped=dict(skipped))


def to_catalog_yaml(result: ImportResult, today: date | None = None) -> str:
    """A catalog file (`--catalog`) with `only: true` (plans use these accelerators alone):
    for each imported accelerator only `name`,
    `usd_per_hour`, `spot_usd_per_hour` (null where the file had none) and `offers`, under a
    comment saying where the prices came from."""
    rows = []
    for imp in result.imported:
        rows.append({
            "name": imp.name,
            "usd_per_hour": round(imp.usd_per_hour, 6),
            "spot_usd_per_hour": None if imp.spot_usd_per_hour is None
            else round(imp.spot_usd_per_hour, 6),
            "offers": [o.model_dump(exclude_none=True) for o in imp.offers],
        })
    scope = f"region {result.region}" if result.region else "all regions"
    when = (today or date.today()).isoformat()
    header = [
        f"# Imported by hetserve catalog --import-skypilot on {when}",
        f"# from {result.path} (cloud {result.cloud}, {scope}).",
        "# Prices are $/h: usd_per_hour and spot_usd_per_hour per device (the cheapest offer's",
        "# instance price / its GPUs); each offer's prices are the whole instance's.",
    ]
    if result.unmapped:
        header.append("# Not in the catalog: " + name_counts(result.unmapped))
    header += ["# only: true plans from these accelerators alone, the ones this cloud offers",
               "# (false: the bundled catalog's other types too, at their reference prices)."]
    body = yaml.safe_dump({"only": True, "accelerators": rows}, sort_keys=False,
                          default_flow_style=False)
    return "\n".join(header) + "\n" + body
