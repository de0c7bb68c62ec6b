"""The profile file: what `hetserve profile` measured on one deployment, and the coefficients
fitted to it (docs/design.md, section 5.7).

JSON, versioned (`version`), validated on load. A profile names the deployment it measured
(model, accelerator, TP, PP, engine, weight dtype, the engine's knobs), holds every measured
point, and, once fitted, the step-time coefficients (`fit`) with the fit's errors. A profile
whose measurement stopped early is `complete: false` with the reason in `failure`: its points
are kept, and it is never fitted or used to override the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from hetserve.catalog import Catalog, Fit
from hetserve.errors import HetserveError, Record, load_json, validation_message, write_text
from hetserve.models import ModelSpec, get_model
from hetserve.workload.trace import MAX_TOKENS

PROFILE_VERSION = 1
MAX_CONCURRENCY = 4096  # clients one closed-loop point keeps busy (as calibrate simulates)


class EngineMetrics(Record):
    """What the engine's /metrics said (vLLM's names), None where it does not export one."""

    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None  # 0..1
    preemptions: float | None = None  # counter


class ProfilePoint(Record):
    """One measured load point: requests of one size, closed loop at a concurrency or open
    loop (Poisson) at a rate."""

    mode: Literal["closed", "open"]
    concurrency: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY)
    rate: float | None = Field(default=None, gt=0, description="req/s, open loop")
    input_tokens: int = Field(ge=1, le=MAX_TOKENS)
    output_tokens: int = Field(ge=1, le=MAX_TOKENS)
    seconds: float = Field(gt=0, description="wall time of the measured window")
    sent: int = Field(ge=0)
    completed: int = Field(ge=0, description="completed in the window, the means' sample")
    ttft: float = Field(ge=0, description="mean seconds to the first token")
    ttft_p90: float = Field(ge=0)
    itl: float = Field(ge=0, description="mean seconds between tokens after the first")
    e2e_latency: float = Field(ge=0, description="mean seconds")
    output_throughput: float = Field(ge=0, description="tokens/s over the window")
    short_outputs: int = Field(default=0, ge=0, description="requests that got fewer tokens "
                               "than asked (the engine ignored min_tokens/ignore_eos)")
    before: EngineMetrics = EngineMetrics()
    after: EngineMetrics = EngineMetrics()
    # every request the point sent, in order: seconds after the point's first, and whether it
    # is one of the measured ones (closed loop: warm-up requests are not); the fit replays them
    sent_at: list[float] = Field(default_factory=list)
    measured: list[bool] = Field(default_factory=list)

    @model_validator(mode="after")
    def _load(self) -> ProfilePoint:
        if (self.mode == "closed") != (self.concurrency is not None) or \
                (self.mode == "open") != (self.rate is not None):
            raise ValueError("a closed-loop point has a concurrency, an open-loop one a rate")
        if len(self.sent_at) != len(self.measured) or (
                self.sent_at and sum(self.measured) != self.completed):
            raise ValueError("sent_at and measured: one entry per request sent, as many "
                             "measured as completed")
        if any(b < a for a, b in zip(self.sent_at, self.sent_at[1:], strict=False)):
            raise ValueError("sent_at: expected times in order")
        return self

    @property
    def label(self) -> str:
        load = f"c={self.concurrency}" if self.mode == "closed" else f"{self.rate:g} req/s"
        return f"{self.input_tokens}/{self.output_tokens} {load}"


class CapacityPoint(Record):
    """A throughput matrix's entry (Mélange's profiles): the most requests per second of one
    size the deployment serves within an SLO (0: it cannot)."""

    input_tokens: int = Field(ge=1, le=MAX_TOKENS)
    output_tokens: int = Field(ge=1, le=MAX_TOKENS)
    rate: float = Field(ge=0, description="req/s")
    ttft: float | None = Field(default=None, gt=0, description="seconds (None: no limit)")
    tpot: float | None = Field(default=None, gt=0, description="seconds (None: no limit)")
    quantile: float = Field(default=0.5, gt=0, lt=1)

    @property
    def slo(self) -> tuple[float, float, float]:
        return (self.ttft or math.inf, self.tpot or math.inf, self.quantile)

    @property
    def label(self) -> str:
        return f"{self.input_tokens}/{self.output_tokens} capacity"


class FitReport(Record):
    """How well the coefficients reproduce the points: median |relative error| over every
    point's TTFT, ITL and throughput, with the model's defaults and with the fit, on the points
    fitted and on the points held back."""

    before: float
    after: float
    held_back_before: float | None = None
    held_back_after: float | None = None
    held_back: list[str] = Field(default_factory=list, description="labels of held-back points")
    client_latency_ms: float = Field(default=0.0, ge=0, description="what the client adds to "
                                     "TTFT beyond the engine (fitted; not part of the model)")
    kept_model: str = Field(default="", description="why the model's own coefficients were "
                            "kept instead of the fit ('': the fit is used)")

    def shortfall(self) -> str:
        """'' when the fit reproduces the points better than the model's coefficients, on
        those fitted and on those held back; else how it falls short."""
        if self.after > self.before:
            return (f"fitted, the median |error| rises from {self.before:.1%} to "
                    f"{self.after:.1%}")
        if self.held_back_after is not None and self.held_back_before is not None \
                and self.held_back_after > self.held_back_before:
            return (f"on the held-back points the median |error| rises from "
                    f"{self.held_back_before:.1%} to {self.held_back_after:.1%}: the fit does "
                    "not generalise")
        return ""


class Profile(Record):
    version: int = PROFILE_VERSION
    model: str = Field(min_length=1, description="model name in hetserve's registry")
    spec: ModelSpec | None = Field(default=None, description="the architecture measured (a "
                                   "profile of a config.json model reads back without it)")
    accelerator: str = Field(min_length=1)
    tp: int = Field(default=1, ge=1)
    pp: int = Field(default=1, ge=1)
    engine: str = "vllm"
    dtype: str = Field(min_length=1, description="weight dtype")
    max_num_seqs: int = Field(ge=1)
    max_num_batched_tokens: int = Field(ge=1)
    endpoint: str = ""
    served_model: str = ""
    prompts: str = Field(default="token ids", description="how prompts were built: token "
                         "ids, or text sized by the endpoint's tokenizer")
    measured_at: str = ""
    complete: bool = True
    failure: str = ""
    points: list[ProfilePoint] = Field(default_factory=list)
    capacities: list[CapacityPoint] = Field(default_factory=list, description="imported "
                                            "throughput-matrix entries (Mélange)")
    fit: Fit | None = None
    fit_report: FitReport | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if self.version != PROFILE_VERSION:
            raise ValueError(f"version {self.version}: this hetserve reads version "
                             f"{PROFILE_VERSION}")
        # the model by its registry name (an alias or another case would never match a
        # deployment); an unknown one is refused
        try:
            spec = self.spec or get_model(self.model)
        except HetserveError as exc:
            raise ValueError(f"model: {exc}") from None
        if not spec.matches(self.model):
            raise ValueError(f"model: '{self.model}' is not the model in spec ('{spec.name}')")
        if self.fit is not None and spec.matches(self.fit.model):
            self.fit = self.fit.model_copy(update={"model": spec.name})
        self.model = spec.name
        if self.fit is not None and not self.complete:
            raise ValueError("a partial profile (complete: false) cannot carry a fit")
        if self.fit is not None and not self.fit.matches(self.model, self.tp, self.pp,
                                                         self.engine, self.dtype):
            raise ValueError("fit: names another deployment than the profile")
        return self

    def save(self, path: Path | str) -> None:
        write_text(path, self.model_dump_json(indent=2) + "\n")


def load_profile(path: Path | str) -> Profile:
    data = load_json(path)
    if not isinstance(data, dict):
        raise HetserveError(f"{path}: expected a profile (a JSON object)")
    kind = data.get("kind")
    if isinstance(kind, str) and kind.startswith("hetserve-"):
        raise HetserveError(f"{path}: is a hetserve {kind.removeprefix('hetserve-')} file, "
                            "not a profile (hetserve profile --out writes one)")
    try:
        return Profile.model_validate(data)
    except ValidationError as err:
        raise HetserveError(validation_message(err, str(path))) from None


def _accelerator_name(prof: Profile, path: Path | str, catalog: Catalog,
                      known: Catalog | None) -> str | None:
    """The catalog's name of the profile's accelerator (in any case); None where `catalog`
    leaves it out but `known` (default: the bundled catalog) holds it; unknown: an error."""
    for cat in (catalog, known):
        if cat is None:
            from hetserve.catalog import load_catalog

            cat = load_catalog()
        try:
            name = cat.get(prof.accelerator).name
        except HetserveError as exc:
            last = exc
            continue
        return name if cat is catalog else None
    raise HetserveError(f"{path}: field 'accelerator': {last}")


def apply_profiles(catalog: Catalog, paths: Iterable[Path | str],
                   known: Catalog | None = None) -> Catalog:
    """`catalog` with the fits of these profile files on their accelerators (named in any
    case): every deployment they measured uses its fitted coefficients. Profiles of
    accelerators the catalog does not hold but `known` (default: the bundled catalog) does are
    left out; an accelerator neither holds, or a profile without a fit (partial, or not
    fitted), is refused, naming the file."""
    fits = []
    for path in paths:
        prof = load_profile(path)
        name = _accelerator_name(prof, path, catalog, known)
        if not prof.complete:
            raise HetserveError(f"{path}: a partial profile ({prof.failure}); measure again")
        if prof.fit is None:
            raise HetserveError(f"{path}: no fit (run hetserve profile --fit {path})")
        if name is not None:  # else a type not considered here
            fits.append((name, prof.fit.model_copy(update={"source": str(path)})))
    return catalog.with_fits(fits)
