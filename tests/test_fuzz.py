"""Fuzz corpus: bad input of every kind, for every subcommand and every file type.

Contract (README, "Bad input"): exit code 2; stderr starts with 'error: ', is at most two lines
and names the file, field or option concerned; no traceback; nothing on stdout. An internal
error (exit 1) is a failure here. Output paths (--out, --plot, --per-request) that cannot be
written are refused before any work is done.

Each case builds its files in tmp_path and runs the CLI in this process (hetserve.cli.main, the
`run_cli` fixture in conftest.py); a few run through the real entry point in a child process.
`FILE` in a case's needs stands for the case's input file: every file a case writes is named
fz<N>.<ext> (a Hugging Face config: fz<N>/config.json), and the message must contain 'fz<N>'.
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pytest
import yaml

from .conftest import assert_bad_input, run_subprocess

FILE = "{FILE}"
MEMORY_LIMIT = 4 << 30  # child processes that may run away (huge counts) stop at 4 GiB
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = "llama-3.1-8b"

# ---- shared inputs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan_data(small_plan) -> dict:
    """A valid plan file's JSON, made by the real CLI."""
    return json.loads(small_plan.read_text())


@pytest.fixture(scope="module")
def estimate_text() -> str:
    res = run_subprocess("estimate", "-m", MODEL, "-w", "azure-code", "--json")
    assert res.code == 0, res.err
    return res.out


def _bundled_accelerator(name: str) -> dict:
    path = resources.files("hetserve.catalog") / "data" / "accelerators.yaml"
    rows = yaml.safe_load(path.read_text(encoding="utf-8"))["accelerators"]
    return dict(next(r for r in rows if r["name"] == name))


def _measurement_lines() -> tuple[str, str]:
    path = resources.files("hetserve.perf") / "data" / "published_measurements.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0], lines[1]


BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe" + bytes(range(256)) * 8
TRACE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
ROW = {"timestamp": 0, "input_tokens": 100, "output_tokens": 20}
HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16", "tie_word_embeddings": False,
}
MELANGE = json.loads((EXAMPLES / "melange_example.json").read_text())
ABSTRACT = json.loads((EXAMPLES / "icml25_example.json").read_text())
STEP_HEADER = "id,gpu,model,dtype,tp,phase,batch,tokens,seconds\n"
POINT = {"mode": "closed", "concurrency": 4, "input_tokens": 256, "output_tokens": 64,
         "seconds": 10, "sent": 20, "completed": 18, "ttft": 0.1, "ttft_p90": 0.2, "itl": 0.03,
         "e2e_latency": 2.0, "output_throughput": 100}
FIT = {"model": "llama-3.1-8b", "tp": 1, "engine": "vllm", "dtype": "bf16", "eta_compute": 0.5,
       "eta_memory": 0.6, "step_overhead_ms": 2.0, "seq_host_us": 100.0}
CAPACITY = {"input_tokens": 128, "output_tokens": 16, "rate": 8.0, "tpot": 0.1}
PROFILE = {"version": 1, "model": "llama-3.1-8b", "accelerator": "A10G", "dtype": "bf16",
           "max_num_seqs": 256, "max_num_batched_tokens": 8192, "points": [POINT],
           "capacities": [CAPACITY]}


def jsonl(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def with_(base: dict, **changes) -> dict:
    out = copy.deepcopy(base)
    out.update(changes)
    return out


def without(base: dict, key: str) -> dict:
    out = copy.deepcopy(base)
    del out[key]
    return out


# ---- building a case's files -----------------------------------------------------------------


class Ctx:
    """Writes a case's files under tmp_path, named fz<N>; `token` is the first one's name."""

    def __init__(self, tmp: Path, plan: dict, estimate: str) -> None:
        self.tmp, self._plan, self._estimate = tmp, plan, estimate
        self.count = 0
        self.token: str | None = None

    def _name(self) -> str:
        self.count += 1
        name = f"fz{self.count}"
        self.token = self.token or name
        return name

    def file(self, ext: str, content: str | bytes) -> str:
        path = self.tmp / f"{self._name()}.{ext}"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    def yaml(self, data) -> str:
        return self.file("yaml", yaml.safe_dump(data, sort_keys=False))

    def json(self, data, ext: str = "json") -> str:
        return self.file(ext, json.dumps(data, indent=1))  # NaN/Infinity as JS tokens

    def hf(self, content: str | bytes | dict) -> str:
        folder = self.tmp / self._name()
        folder.mkdir()
        path = folder / "config.json"
        if isinstance(content, dict):
            content = json.dumps(content)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    def folder(self, ext: str = "") -> str:
        path = self.tmp / (self._name() + (f".{ext}" if ext else ""))
        path.mkdir()
        return str(path)

    def missing(self, ext: str) -> str:
        return str(self.tmp / f"{self._name()}.{ext}")

    def missing_dir(self, name: str) -> str:
        """A path inside a folder that does not exist."""
        return str(self.tmp / self._name() / name)

    def plan(self, mutate: Callable[[dict], dict | None] | None = None) -> str:
        data = copy.deepcopy(self._plan)
        if mutate is not None:
            data = mutate(data) or data
        return self.json(data)

    def plan_raw(self, make: Callable[[str], str | bytes]) -> str:
        return self.file("json", make(json.dumps(self._plan, indent=1)))

    def estimate_json(self) -> str:
        return self.file("json", self._estimate)

    def valid_plan(self) -> str:
        """A valid plan file that is not the case's input (does not take the FILE token)."""
        path = self.tmp / "valid-plan.json"
        path.write_text(json.dumps(self._plan), encoding="utf-8")
        return str(path)


# ---- plan mutations (each keeps the rest of the plan consistent) -------------------------------


def _g(d: dict, i: int = 0) -> dict:
    return d["groups"][i]


def _unit_price(g: dict) -> float:
    return g["usd_per_hour"] / (g["replicas"] * g["devices_per_replica"])


def _retotal(d: dict) -> dict:
    """Plan total = sum of the groups (tokens per dollar follows the cost)."""
    old = d["usd_per_hour"]
    d["usd_per_hour"] = sum(g["usd_per_hour"] for g in d["groups"])
    if d.get("tokens_per_dollar") and d["usd_per_hour"] > 0:
        d["tokens_per_dollar"] *= old / d["usd_per_hour"]
    return d


def _reshape(d: dict, **fields) -> dict:
    """Change a group's tp/pp/replicas/devices and reprice it consistently."""
    g = _g(d)
    unit = _unit_price(g)
    g.update(fields)
    g["usd_per_hour"] = unit * g["replicas"] * g["devices_per_replica"]
    return _retotal(d)


def _second_group(d: dict, gid: str, share: float) -> dict:
    """Group 0 and a copy of it as the only groups; both route `share` of every class."""
    g = _g(d)
    g["shares"] = {c["name"]: share for m in d["models"] for c in m["classes"]}
    twin = copy.deepcopy(g)
    twin["id"] = gid
    d["groups"] = [g, twin]
    return _retotal(d)


def _set_group(**fields):
    def mutate(d):
        _g(d).update(fields)
    return mutate


def _set_shares(value):
    def mutate(d):
        g = _g(d)
        for name in g["shares"]:
            g["shares"][name] = value
    return mutate


def _first_share(value):
    def mutate(d):
        g = _g(d)
        g["shares"][next(iter(g["shares"]))] = value
    return mutate


def _first_capacity(value):
    def mutate(d):
        g = _g(d)
        g["capacity"][next(iter(g["capacity"]))] = value
    return mutate


def _del_group_key(key):
    def mutate(d):
        del _g(d)[key]
    return mutate


def _old_version(d):
    d["version"] = 1  # versions 2 and 3 load


def _group_usd_times(factor):
    def mutate(d):
        _g(d)["usd_per_hour"] *= factor
        _retotal(d)
    return mutate


def _total_usd_mismatch(d):
    d["usd_per_hour"] = round(d["usd_per_hour"] * 3 + 1, 2)


def _model_dtype(d):
    d["models"][0]["dtype"] = "fp9"


def _class_rate(value):
    def mutate(d):
        d["models"][0]["classes"][0]["rate"] = value
    return mutate


def _input_range_reversed(d):
    c = d["models"][0]["classes"][0]
    c["input_range"] = list(reversed(c["input_range"]))


def _share_unknown_class(d):
    _g(d)["shares"]["in9-9/out9-9"] = 0.5


def _huge_replicas(d):
    return _reshape(d, replicas=10**30)


def _not_utf8_plan(text: str) -> bytes:
    d = json.loads(text)
    d["best_homogeneous"] = "caf\xe9"
    return json.dumps(d, ensure_ascii=False).encode("latin-1")


# ---- the corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Ctx], list]
    needs: tuple = (FILE,)
    guard: tuple[str, ...] = ()  # "module:function": work that must not start
    max_seconds: float | None = None
    timeout: float | None = None  # run in a child process, killed after this many seconds


def wl(make) -> Callable[[Ctx], list]:
    """`hetserve workload FILE`."""
    return lambda c: ["workload", make(c)]


def est_w(make):
    return lambda c: ["estimate", "-m", MODEL, "-w", make(c)]


def plan_w(make):
    return lambda c: ["plan", "-m", MODEL, "-w", make(c)]


def sim(make_plan, *extra):
    return lambda c: ["simulate", make_plan(c), *extra]


def sim_plan(mutate=None, *extra):
    return lambda c: ["simulate", c.plan(mutate), "--requests", "50", *extra]


def csv_trace(body: str, header: str = TRACE_HEADER):
    return lambda c: c.file("csv", header + body)


def jl_trace(*rows, raw: str | None = None):
    return lambda c: c.file("jsonl", raw if raw is not None else jsonl(*rows))


def cat_file(make):
    return lambda c: ["catalog", "--catalog", make(c)]


def cat_rows(*rows):
    return lambda c: c.yaml(list(rows))


def a10g(**changes):
    return {"name": "A10G", **changes}


def new_gpu(**changes):
    row = _bundled_accelerator("A10G")
    row.update(name="MyGPU", **changes)
    return row


def avail(make, cmd=("catalog",)):
    return lambda c: [*cmd, "--available", make(c)]


def hf_est(content):
    return lambda c: ["estimate", "-m", c.hf(content)]


def mel(make):
    return lambda c: ["melange", make(c)]


def solve(make):
    return lambda c: ["solve", make(c)]


def cal(make):
    return lambda c: ["calibrate", "--data", make(c)]


def cal_row(**changes):
    header, row = _measurement_lines()
    cells = dict(zip(header.split(","), row.split(",", header.count(",")), strict=True))
    cells.update({k: str(v) for k, v in changes.items()})
    return lambda c: c.file("csv", header + "\n" + ",".join(cells.values()) + "\n")


def prof(make):
    """`hetserve profile --report FILE`."""
    return lambda c: ["profile", "--report", make(c)]


def opts(*args):
    return lambda c: list(args)


def with_plan(*args):
    """simulate on the valid plan, with options."""
    return lambda c: ["simulate", c.valid_plan(), *args]


P = ["plan", "-m", MODEL, "-w", "azure-code", "--rate", "2"]
E = ["estimate", "-m", MODEL, "-w", "azure-code"]
OTHER_MODEL = "qwen2.5-72b"
SLOW_PLAN = ["plan", "-m", "llama-3.1-70b", "-w", "azure-conv", "--rate", "10", "--verify"]
PLAN_WORK = ("hetserve.plan:solve_plan", "hetserve.sim.verify:verify")
SIM_WORK = ("hetserve.sim.simulate:simulate",)
EST_WORK = ("hetserve.perf.estimate:estimate",)

CASES = [
    # ---- traces: Azure CSV ------------------------------------------------------------------
    Case("trace-csv/empty", wl(csv_trace("", header=""))),
    Case("trace-csv/header-only", wl(csv_trace(""))),
    Case("trace-csv/truncated-row", wl(csv_trace("0,10,5\n1,2"))),
    Case("trace-csv/unterminated-quote", wl(csv_trace('0,"10,5\n'))),
    Case("trace-csv/binary", wl(lambda c: c.file("csv", BINARY))),
    Case("trace-csv/nul-byte", wl(csv_trace("0,10,5\n1,1\x000,5\n"))),
    Case("trace-csv/not-utf8", wl(lambda c: c.file("csv", (
        "TIMESTAMP,ContextTokens,GeneratedTokens,Note\n0,10,5,caf\xe9\n").encode("latin-1")))),
    Case("trace-csv/huge-float-tokens", wl(csv_trace("0,1e30,5\n")), (FILE, "ContextTokens")),
    Case("trace-csv/huge-int-tokens", wl(csv_trace("0,10,100000000000000000000000000\n")),
         (FILE, "GeneratedTokens")),
    Case("trace-csv/nan-timestamp", wl(csv_trace("nan,10,5\n1,10,5\n")), (FILE, "TIMESTAMP")),
    Case("trace-csv/inf-timestamp-estimate", est_w(csv_trace("0,10,5\ninf,10,5\n")),
         (FILE, "TIMESTAMP")),
    Case("trace-csv/nan-tokens", wl(csv_trace("0,nan,5\n")), (FILE, "ContextTokens")),
    Case("trace-csv/inf-tokens-plan", plan_w(csv_trace("0,10,inf\n")),
         (FILE, "GeneratedTokens")),
    Case("trace-csv/negative-tokens", wl(csv_trace("0,-5,5\n")), (FILE, "ContextTokens")),
    Case("trace-csv/folder", wl(lambda c: c.folder("csv"))),
    Case("trace-csv/missing-estimate", est_w(lambda c: c.missing("csv"))),
    # ---- traces: JSONL ------------------------------------------------------------------------
    Case("trace-jsonl/empty", wl(jl_trace(raw=""))),
    Case("trace-jsonl/truncated", wl(jl_trace(raw=jsonl(ROW) + '{"timestamp": 1, "inp'))),
    Case("trace-jsonl/binary", wl(lambda c: c.file("jsonl", BINARY))),
    Case("trace-jsonl/not-utf8-estimate", est_w(lambda c: c.file(
        "jsonl", (jsonl(ROW).rstrip("\n")[:-1] + ', "model": "caf\xe9"}\n').encode("latin-1")))),
    Case("trace-jsonl/nan-timestamp", wl(jl_trace(with_(ROW, timestamp=float("nan")), ROW)),
         (FILE, "timestamp")),
    Case("trace-jsonl/infinity-tokens", wl(jl_trace(with_(ROW, input_tokens=float("inf")))),
         (FILE, "input_tokens")),
    Case("trace-jsonl/huge-tokens", wl(jl_trace(with_(ROW, output_tokens=10**30))),
         (FILE, "output_tokens")),
    Case("trace-jsonl/bool-tokens", wl(jl_trace(with_(ROW, input_tokens=True))),
         (FILE, "input_tokens")),
    Case("trace-jsonl/nested-tokens", wl(jl_trace(with_(ROW, input_tokens={"n": 100}))),
         (FILE, "input_tokens")),
    Case("trace-jsonl/nested-model", wl(jl_trace(with_(ROW, model={"name": MODEL}))),
         (FILE, "model")),
    Case("trace-jsonl/list-line", wl(jl_trace(raw="[0, 100, 20]\n"))),
    Case("trace-jsonl/missing-field-plan", plan_w(jl_trace(without(ROW, "output_tokens"))),
         (FILE, "output_tokens")),
    Case("trace-jsonl/junk-timestamp", wl(jl_trace(with_(ROW, timestamp="yesterday"))),
         (FILE, "timestamp")),
    Case("trace-jsonl/deep-nesting", wl(jl_trace(raw="[" * 100_000 + "\n"))),
    Case("trace-jsonl/folder", wl(lambda c: c.folder("jsonl"))),
    Case("trace-jsonl/simulate-other-model-only", lambda c: [
        "simulate", c.valid_plan(), "--workload",
        c.file("jsonl", jsonl(*(with_(ROW, timestamp=t, model=OTHER_MODEL) for t in range(5))))],
        ((FILE, MODEL),)),
    Case("trace-jsonl/simulate-nan-timestamp", lambda c: [
        "simulate", c.valid_plan(), "-w", c.file("jsonl", jsonl(
            ROW, with_(ROW, timestamp=float("nan"))))], (FILE, "timestamp")),
    # ---- catalog YAML (--catalog) -------------------------------------------------------------
    Case("catalog-yaml/empty", cat_file(lambda c: c.file("yaml", ""))),
    Case("catalog-yaml/truncated", cat_file(lambda c: c.file(
        "yaml", "- name: A10G\n  usd_per_hour: [1"))),
    Case("catalog-yaml/binary", cat_file(lambda c: c.file("yaml", BINARY))),
    Case("catalog-yaml/not-utf8-estimate", lambda c: [*E, "--catalog", c.file(
        "yaml", "- name: A10G\n  notes: caf\xe9\n".encode("latin-1"))]),
    Case("catalog-yaml/nan-price", cat_file(cat_rows(a10g(usd_per_hour=float("nan")))),
         (FILE, "usd_per_hour")),
    Case("catalog-yaml/inf-bandwidth-plan", lambda c: [*P, "--catalog", c.yaml(
        [a10g(memory_bw_gbs=float("inf"))])], (FILE, "memory_bw_gbs")),
    Case("catalog-yaml/huge-memory", cat_file(lambda c: c.file(
        "yaml", "- name: A10G\n  memory_gb: 1.0e+400\n")), (FILE, "memory_gb")),
    Case("catalog-yaml/wrong-type", cat_file(cat_rows(a10g(memory_gb="lots"))),
         (FILE, "memory_gb")),
    Case("catalog-yaml/bool-number", cat_file(cat_rows(a10g(memory_gb=True))),
         (FILE, "memory_gb")),
    Case("catalog-yaml/nested-price", cat_file(cat_rows(a10g(usd_per_hour={"amount": 1}))),
         (FILE, "usd_per_hour")),
    Case("catalog-yaml/new-row-missing-field", cat_file(cat_rows({"name": "MyGPU",
                                                                 "kind": "gpu"})),
         (FILE, "MyGPU")),
    Case("catalog-yaml/new-row-nan-compute", cat_file(cat_rows(new_gpu(
        eta_compute=float("nan")))), (FILE, "eta_compute")),
    Case("catalog-yaml/unknown-field", cat_file(cat_rows(a10g(colour="red"))),
         (FILE, "colour")),
    Case("catalog-yaml/row-not-mapping", cat_file(lambda c: c.file("yaml", "- A10G\n"))),
    Case("catalog-yaml/name-is-list", cat_file(lambda c: c.file(
        "yaml", "- name: [a, b]\n  usd_per_hour: 1\n")), (FILE, "name")),
    Case("catalog-yaml/accelerators-mapping", cat_file(lambda c: c.file(
        "yaml", "accelerators: {A10G: 1}\n"))),
    Case("catalog-yaml/duplicate-rows", cat_file(cat_rows(a10g(usd_per_hour=1),
                                                          a10g(name="a10g", usd_per_hour=2))),
         (FILE, "'A10G'", "'a10g'")),
    Case("catalog-yaml/version-2", cat_file(lambda c: c.yaml({"version": 2,
                                                              "accelerators": []})),
         (FILE, "version 2")),
    Case("catalog-yaml/unknown-top-level-field", cat_file(lambda c: c.yaml({
        "version": 1, "accelerator": [a10g(usd_per_hour=1)]})), (FILE, "accelerator")),
    Case("catalog-yaml/python-tag", cat_file(lambda c: c.file(
        "yaml", "- !!python/object/apply:os.system ['true']\n"))),
    Case("catalog-yaml/folder-calibrate", lambda c: ["calibrate", "--catalog", c.folder("yaml")]),
    Case("catalog-yaml/missing-simulate", lambda c: [
        "simulate", c.valid_plan(), "--catalog", c.missing("yaml")]),
    # ---- availability file (--available FILE) -------------------------------------------------
    Case("avail/empty", avail(lambda c: c.file("yaml", ""))),
    Case("avail/negative-plan", avail(lambda c: c.yaml({"A10G": -3}), P), (FILE, "A10G")),
    Case("avail/fraction-estimate", avail(lambda c: c.yaml({"A10G": 1.5}), E), (FILE, "A10G")),
    Case("avail/unknown-accelerator", avail(lambda c: c.yaml({"H100": 4})), (FILE, "H100")),
    Case("avail/binary", avail(lambda c: c.file("yaml", BINARY))),
    Case("avail/nested", avail(lambda c: c.yaml({"A10G": {"count": 2}})), (FILE, "A10G")),
    Case("avail/list", avail(lambda c: c.file("yaml", "- A10G\n"))),
    Case("avail/nan", avail(lambda c: c.yaml({"A10G": float("nan")})), (FILE, "A10G")),
    Case("avail/bool", avail(lambda c: c.yaml({"A10G": True})), (FILE, "A10G")),
    Case("avail/folder", avail(lambda c: c.folder("yaml"))),
    Case("avail/missing", avail(lambda c: c.missing("yaml"))),
    # ---- Hugging Face config.json (--model) ----------------------------------------------------
    Case("hf-config/empty", hf_est("")),
    Case("hf-config/truncated", hf_est(json.dumps(HF_CONFIG)[:60])),
    Case("hf-config/binary", hf_est(BINARY)),
    Case("hf-config/not-utf8-plan", lambda c: ["plan", "-m", c.hf(
        json.dumps(with_(HF_CONFIG, _name_or_path="caf\xe9"), ensure_ascii=False)
        .encode("latin-1"))]),
    Case("hf-config/list", hf_est("[1, 2]")),
    Case("hf-config/missing-field", hf_est(without(HF_CONFIG, "vocab_size")),
         (FILE, "vocab_size")),
    Case("hf-config/nested-hidden", hf_est(without(with_(HF_CONFIG, hidden_size={"a": 1}),
                                                   "num_key_value_heads")),
         (FILE, "hidden_size")),
    Case("hf-config/zero-heads", hf_est(with_(HF_CONFIG, num_attention_heads=0)),
         (FILE, "num_attention_heads")),
    Case("hf-config/nan-hidden", hf_est(with_(HF_CONFIG, hidden_size=float("nan"))),
         (FILE, ("hidden_size", "nan"))),
    Case("hf-config/infinity-vocab", hf_est(with_(HF_CONFIG, vocab_size=float("inf"))),
         (FILE, ("vocab_size", "infinity"))),
    Case("hf-config/huge-layers", hf_est(with_(HF_CONFIG, num_hidden_layers=10**30)),
         (FILE, "num_hidden_layers")),
    Case("hf-config/bool-layers", hf_est(with_(HF_CONFIG, num_hidden_layers=True)),
         (FILE, "num_hidden_layers")),
    Case("hf-config/heads-not-multiple-of-kv", hf_est(with_(HF_CONFIG, num_key_value_heads=5)),
         (FILE, "heads")),
    Case("hf-config/folder-named-json", lambda c: ["estimate", "-m", c.folder("json")]),
    Case("hf-config/missing-plan", lambda c: ["plan", "-m", c.missing_dir("config.json")]),
    # ---- plan files (simulate PLAN) ------------------------------------------------------------
    Case("plan-file/empty", sim(lambda c: c.file("json", ""))),
    Case("plan-file/truncated", sim(lambda c: c.plan_raw(lambda t: t[: len(t) // 2]))),
    Case("plan-file/binary", sim(lambda c: c.file("json", BINARY))),
    Case("plan-file/not-utf8", sim(lambda c: c.plan_raw(_not_utf8_plan))),
    Case("plan-file/deep-nesting", sim(lambda c: c.file("json", "[" * 100_000))),
    Case("plan-file/list-not-object", sim(lambda c: c.plan(lambda d: [d]))),
    Case("plan-file/estimate-json", sim(lambda c: c.estimate_json())),
    Case("plan-file/kind-wrong", sim_plan(lambda d: d.update(kind="hetserve-estimate")),
         (FILE, "kind")),
    Case("plan-file/version-old", sim_plan(_old_version), (FILE, "version")),
    Case("plan-file/version-99", sim_plan(lambda d: d.update(version=99)), (FILE, "version")),
    Case("plan-file/shares-sum-to-2", sim_plan(lambda d: _second_group(d, "twin", 1.0)),
         (FILE, "share")),
    Case("plan-file/share-2", sim_plan(_set_shares(2.0)), (FILE, "share")),
    Case("plan-file/shares-sum-to-half", sim_plan(_set_shares(0.5)), (FILE, "share")),
    Case("plan-file/share-negative", sim_plan(_first_share(-0.5)), (FILE, "share")),
    Case("plan-file/share-nan", sim_plan(_first_share(float("nan"))), (FILE, ("share", "nan"))),
    Case("plan-file/share-unknown-class", sim_plan(_share_unknown_class), (FILE, "in9-9")),
    Case("plan-file/duplicate-group-ids", sim_plan(lambda d: _second_group(d, _g(d)["id"], 0.5)),
         (FILE, "id")),
    Case("plan-file/devices-not-tp-x-pp", sim_plan(lambda d: _reshape(
        d, devices_per_replica=_g(d)["tp"] * _g(d)["pp"] + 1)),
         (FILE, "devices_per_replica")),
    Case("plan-file/tp-3", sim_plan(lambda d: _reshape(d, tp=3, devices_per_replica=3)),
         (FILE, "tp")),
    Case("plan-file/replicas-0", sim_plan(_set_group(replicas=0)), (FILE, "replicas")),
    Case("plan-file/replicas-huge", sim_plan(_huge_replicas), (FILE, "replicas"),
         timeout=30),
    Case("plan-file/group-usd-0", sim_plan(lambda d: _retotal(_set_group(usd_per_hour=0)(d)
                                                          or d)),
         (FILE, "usd_per_hour")),
    Case("plan-file/group-usd-negative", sim_plan(_set_group(usd_per_hour=-2.0)),
         (FILE, "usd_per_hour")),
    Case("plan-file/group-usd-not-price", sim_plan(_group_usd_times(1.5)),
         (FILE, "usd_per_hour")),
    Case("plan-file/total-usd-not-sum", sim_plan(_total_usd_mismatch), (FILE, "usd_per_hour")),
    Case("plan-file/usd-nan", sim_plan(lambda d: d.update(usd_per_hour=float("nan"))),
         (FILE, ("usd_per_hour", "nan"))),
    Case("plan-file/capacity-infinity", sim_plan(_first_capacity(float("inf"))),
         (FILE, ("capacity", "infinity"))),
    Case("plan-file/group-dtype-fp9", sim_plan(_set_group(dtype="fp9")), (FILE, "dtype")),
    Case("plan-file/model-dtype-fp9", sim_plan(_model_dtype), (FILE, "dtype")),
    Case("plan-file/max-num-seqs-0", sim_plan(_set_group(max_num_seqs=0)),
         (FILE, "max_num_seqs")),
    Case("plan-file/max-num-batched-tokens-negative",
         sim_plan(_set_group(max_num_batched_tokens=-8192)), (FILE, "max_num_batched_tokens")),
    Case("plan-file/group-unknown-model", sim_plan(_set_group(model="gpt-17")),
         (FILE, "gpt-17")),
    Case("plan-file/group-unknown-accelerator", sim_plan(_set_group(accelerator="H900")),
         (FILE, "H900")),
    Case("plan-file/class-rate-negative", sim_plan(_class_rate(-1.0)), (FILE, "rate")),
    Case("plan-file/input-range-reversed", sim_plan(_input_range_reversed),
         (FILE, "input_range")),
    Case("plan-file/missing-groups", sim_plan(lambda d: d.pop("groups") and None),
         (FILE, "groups")),
    Case("plan-file/groups-empty", sim_plan(lambda d: d.update(groups=[])), (FILE, "groups")),
    Case("plan-file/missing-tp", sim_plan(_del_group_key("tp")), (FILE, "tp")),
    Case("plan-file/nested-replicas", sim_plan(_set_group(replicas={"n": 1})),
         (FILE, "replicas")),
    Case("plan-file/nested-capacity", sim_plan(_first_capacity({"req_s": 1.0})),
         (FILE, "capacity")),
    Case("plan-file/slo-ttft-nan", sim_plan(lambda d: d["models"][0]["slo"].update(
        ttft=float("nan"))), (FILE, ("ttft", "nan"))),
    Case("plan-file/folder", sim(lambda c: c.folder("json"))),
    Case("plan-file/missing", sim(lambda c: c.missing("json"))),
    # ---- Mélange input (melange FILE) ---------------------------------------------------------
    Case("melange/empty", mel(lambda c: c.file("json", ""))),
    Case("melange/truncated", mel(lambda c: c.file("json", json.dumps(MELANGE)[:70]))),
    Case("melange/binary", mel(lambda c: c.file("json", BINARY))),
    Case("melange/list", mel(lambda c: c.json([MELANGE]))),
    Case("melange/missing-gpu-info", mel(lambda c: c.json(without(MELANGE, "gpu_info"))),
         (FILE, "gpu_info")),
    Case("melange/tputs-wrong-shape", mel(lambda c: c.json(with_(MELANGE, gpu_info={
        "A10G": {"cost": 1.01, "tputs": [[2, 1, 3]]}}))), (FILE, "tputs")),
    Case("melange/rate-nan", mel(lambda c: c.json(with_(MELANGE,
                                                        total_request_rate=float("nan")))),
         (FILE, ("total_request_rate", "nan"))),
    Case("melange/rate-negative", mel(lambda c: c.json(with_(MELANGE, total_request_rate=-30))),
         (FILE, "total_request_rate")),
    Case("melange/rate-huge", mel(lambda c: c.json(with_(MELANGE, total_request_rate=1e308))),
         (FILE, "total_request_rate")),
    Case("melange/cost-string", mel(lambda c: c.json(with_(MELANGE, gpu_info={
        "A10G": {"cost": "cheap", "tputs": [[2, 1], [5, 2]]}}))), (FILE, "cost")),
    Case("melange/cost-infinity", mel(lambda c: c.json(with_(MELANGE, gpu_info={
        **MELANGE["gpu_info"], "A10G": {"cost": float("inf"), "tputs": [[2, 1], [5, 2]]}}))),
         (FILE, ("cost", "infinity"))),
    Case("melange/gpu-entry-number", mel(lambda c: c.json(with_(MELANGE, gpu_info={"A10G": 5}))),
         (FILE, "A10G")),
    Case("melange/distribution-ragged", mel(lambda c: c.json(with_(
        MELANGE, workload_distribution=[[0.2], [0.5, 0.3]]))), (FILE, "workload_distribution")),
    Case("melange/distribution-strings", mel(lambda c: c.json(with_(
        MELANGE, workload_distribution=[["a", "b"], ["c", "d"]]))),
         (FILE, "workload_distribution")),
    Case("melange/slice-factor-negative", mel(lambda c: c.json(with_(MELANGE, slice_factor=-1))),
         (FILE, "slice_factor")),
    Case("melange/distribution-sum-8", mel(lambda c: c.json(with_(
        MELANGE, workload_distribution=[[2, 2], [2, 2]]))),
         (FILE, "workload_distribution", "add up to 8, expected 1")),
    Case("melange/unknown-top-level-field", mel(lambda c: c.json(with_(MELANGE, bogus=1))),
         (FILE, "bogus")),
    Case("melange/bucket-nobody-serves", mel(lambda c: c.json(with_(MELANGE, gpu_info={
        n: with_(g, tputs=[[0, *g["tputs"][0][1:]], *g["tputs"][1:]])
        for n, g in MELANGE["gpu_info"].items()}))), (FILE, "bucket [0, 0]")),
    Case("melange/folder", mel(lambda c: c.folder("json"))),
    Case("melange/missing", mel(lambda c: c.missing("json"))),
    # ---- abstract makespan input (solve FILE) -------------------------------------------------
    Case("solve/empty", solve(lambda c: c.file("json", ""))),
    Case("solve/truncated", solve(lambda c: c.file("json", json.dumps(ABSTRACT)[:90]))),
    Case("solve/binary", solve(lambda c: c.file("json", BINARY))),
    Case("solve/list", solve(lambda c: c.json([ABSTRACT]))),
    Case("solve/missing-configs", solve(lambda c: c.json(without(ABSTRACT, "configs"))),
         (FILE, "configs")),
    Case("solve/demand-string", solve(lambda c: c.json(with_(ABSTRACT, workloads={
        "w1": "lots", "w2": 20}))), (FILE, "w1")),
    Case("solve/nested-demand", solve(lambda c: c.json(with_(ABSTRACT, workloads={
        "w1": {"demand": 80}, "w2": 20}))), (FILE, "w1")),
    Case("solve/gpu-type-number", solve(lambda c: c.json(with_(ABSTRACT, gpu_types={
        **ABSTRACT["gpu_types"], "type1": 4}))), (FILE, "type1")),
    Case("solve/gpu-count-string", solve(lambda c: c.json(with_(ABSTRACT, configs={
        **ABSTRACT["configs"], "c1": {"gpus": {"type1": "two"}, "throughput": {"w1": 1.0}}}))),
         (FILE, "c1")),
    Case("solve/budget-string", solve(lambda c: c.json(with_(ABSTRACT, budget="lots"))),
         (FILE, "budget")),
    Case("solve/budget-nan", solve(lambda c: c.json(with_(ABSTRACT, budget=float("nan")))),
         (FILE, ("budget", "nan"))),
    Case("solve/budget-negative", solve(lambda c: c.json(with_(ABSTRACT, budget=-8))),
         (FILE, "budget")),
    Case("solve/available-negative", solve(lambda c: c.json(with_(ABSTRACT, gpu_types={
        **ABSTRACT["gpu_types"], "type1": {"price": 4, "available": -2}}))),
         (FILE, "available")),
    Case("solve/throughput-infinity", solve(lambda c: c.json(with_(ABSTRACT, configs={
        **ABSTRACT["configs"], "c3": {"gpus": {"type3": 1},
                                      "throughput": {"w1": float("inf"), "w2": 0.5}}}))),
         (FILE, ("throughput", "infinity"))),
    Case("solve/unknown-gpu-type", solve(lambda c: c.json(with_(ABSTRACT, configs={
        **ABSTRACT["configs"], "c9": {"gpus": {"type9": 1}, "throughput": {"w1": 1.0}}}))),
         (FILE, "type9")),
    Case("solve/folder", solve(lambda c: c.folder("json"))),
    Case("solve/missing", solve(lambda c: c.missing("json"))),
    # ---- calibration CSV (calibrate --data FILE) ------------------------------------------------
    Case("calib-csv/empty", cal(lambda c: c.file("csv", ""))),
    Case("calib-csv/binary", cal(lambda c: c.file("csv", BINARY))),
    Case("calib-csv/not-utf8", cal(lambda c: c.file("csv", (
        "\n".join(_measurement_lines()) + " caf\xe9\n").encode("latin-1")))),
    Case("calib-csv/truncated-row", cal(lambda c: c.file(
        "csv", _measurement_lines()[0] + "\na10g-x,A10G,1\n"))),
    Case("calib-csv/value-nan", cal(cal_row(value="nan")), (FILE, "value")),
    Case("calib-csv/value-inf", cal(cal_row(value="inf")), (FILE, "value")),
    Case("calib-csv/tp-string", cal(cal_row(tp="two")), (FILE, "tp")),
    Case("calib-csv/unknown-gpu", cal(cal_row(gpu="H900")), (FILE, "H900")),
    Case("calib-csv/unknown-model", cal(cal_row(model="gpt-17")), (FILE, "gpt-17")),
    Case("calib-csv/concurrency-huge", cal(cal_row(concurrency=10**12)), (FILE, "concurrency"),
         timeout=30),
    Case("calib-csv/duplicate-id", cal(lambda c: c.file("csv", "\n".join(
        [_measurement_lines()[0], *[_measurement_lines()[1]] * 2]) + "\n")),
         (FILE, "appears twice")),
    Case("calib-csv/unknown-gpu-line", cal(cal_row(gpu="H900")), (FILE, "line 2", "gpu")),
    Case("calib-csv/step-times-tp3", cal(lambda c: c.file("csv", STEP_HEADER +
                                                         "s1,H100-SXM,llama-3.1-8b,bf16,3,"
                                                         "prefill,1,512,0.02\n")),
         (FILE, "line 2", "TP must be 1, 2, 4 or 8")),
    Case("calib-csv/step-times-unknown-gpu", cal(lambda c: c.file("csv", STEP_HEADER +
                                                                 "s1,H900,llama-3.1-8b,bf16,1,"
                                                                 "prefill,1,512,0.02\n")),
         (FILE, "line 2", "H900")),
    Case("calib-csv/folder", cal(lambda c: c.folder("csv"))),
    Case("calib-csv/missing", cal(lambda c: c.missing("csv"))),
    # ---- profile files (profile --report FILE, --profile FILE) --------------------------------
    Case("profile/concurrency-huge", prof(lambda c: c.json(with_(PROFILE, points=[
        with_(POINT, concurrency=10**9)]))), (FILE, "points.0.concurrency", "4096"), timeout=30),
    Case("profile/input-tokens-huge", prof(lambda c: c.json(with_(PROFILE, points=[
        with_(POINT, input_tokens=10**12)]))), (FILE, "points.0.input_tokens"), timeout=30),
    Case("profile/capacity-tokens-huge", prof(lambda c: c.json(with_(PROFILE, capacities=[
        with_(CAPACITY, input_tokens=10**12)]))), (FILE, "capacities.0.input_tokens"),
         timeout=30),
    Case("profile/unknown-accelerator-estimate", lambda c: [*E, "--profile", c.json(with_(
        PROFILE, accelerator="FOO", fit=FIT))], (FILE, "accelerator", "FOO")),
    Case("profile/unknown-accelerator-report", prof(lambda c: c.json(with_(
        PROFILE, accelerator="FOO"))), (FILE, "accelerator", "FOO")),
    Case("profile/unknown-model", prof(lambda c: c.json(with_(PROFILE, model="gpt-17"))),
         (FILE, "model", "gpt-17")),
    Case("profile/plan-file-plan", lambda c: [*P, "--profile", c.plan()],
         (FILE, "plan file, not a profile")),
    # ---- option values --------------------------------------------------------------------------
    Case("opt/workload-rate-abc", opts("workload", "azure-code", "--rate", "abc"), ("--rate",)),
    Case("opt/estimate-rate-negative", opts(*E, "--rate", "-1"), ("--rate",)),
    Case("opt/plan-rate-zero", opts(*P[:-2], "--rate", "0"), ("--rate",)),
    Case("opt/workload-rate-inf", opts("workload", "azure-code", "--rate", "inf"), ("--rate",)),
    Case("opt/plan-rate-nan", opts(*P[:-2], "--rate", "nan"), ("--rate",)),
    Case("opt/simulate-rate-nan", with_plan("--rate", "nan", "--requests", "50"), ("--rate",)),
    Case("opt/plan-model-spec-rate-nan", opts("plan", "-m", f"{MODEL}:azure-code:nan"),
         ("--model",)),
    Case("opt/catalog-price-nan", opts("catalog", "--price", "A10G=nan"), ("--price",)),
    Case("opt/catalog-price-inf", opts("catalog", "--price", "A10G=inf"), ("--price",)),
    Case("opt/estimate-price-negative", opts(*E, "--price", "A10G=-1"), ("--price",)),
    Case("opt/calibrate-price-junk", opts("calibrate", "--price", "A10G=cheap"), ("--price",)),
    Case("opt/catalog-available-negative", opts("catalog", "--available", "A10G=-3"),
         ("--available",)),
    Case("opt/plan-available-fraction", opts(*P, "--available", "A10G=1.5"), ("--available",)),
    Case("opt/estimate-available-unknown", opts(*E, "--available", "H100=4"), ("H100",)),
    Case("opt/estimate-ttft-junk", opts(*E, "--ttft", "junk"), ("--ttft",)),
    Case("opt/estimate-ttft-zero", opts(*E, "--ttft", "0"), ("--ttft",)),
    Case("opt/estimate-ttft-huge", opts(*E, "--ttft", "1e999"), ("--ttft",)),
    Case("opt/plan-tpot-negative", opts(*P, "--tpot", "-1"), ("--tpot",)),
    Case("opt/estimate-dtype-fp9", opts(*E, "--dtype", "fp9"), ("--dtype",)),
    Case("opt/plan-objective-nope", opts(*P, "--objective", "nope"), ("--objective",)),
    Case("opt/plan-budget-zero", opts(*P, "--objective", "throughput", "--budget", "0"),
         ("--budget",)),
    Case("opt/plan-budget-negative", opts(*P, "--budget", "-5"), ("--budget",)),
    Case("opt/plan-budget-nan", opts(*P, "--objective", "throughput", "--budget", "nan"),
         ("--budget",)),
    Case("opt/plan-throughput-unbounded", opts(*P, "--objective", "throughput"),
         (("--budget", "--available"),)),
    Case("opt/plan-target-zero", opts(*P, "--verify", "--target", "0"), ("--target",)),
    Case("opt/plan-target-above-1", opts(*P, "--verify", "--target", "1.5"), ("--target",)),
    Case("opt/plan-rounds-zero", opts(*P, "--verify", "--rounds", "0"), ("--rounds",)),
    Case("opt/plan-max-devices-zero", opts(*P, "--max-devices", "0"), ("--max-devices",)),
    Case("opt/plan-model-twice", opts(*P, "-m", MODEL), (MODEL,)),
    Case("opt/workload-input-edges-decreasing", opts("workload", "azure-code", "--input-edges",
                                                     "5,3"), ("--input-edges",)),
    Case("opt/estimate-output-edges-junk", opts(*E, "--output-edges", "a,b"),
         ("--output-edges",)),
    Case("opt/simulate-router-x", with_plan("--router", "x"), ("--router",)),
    Case("opt/simulate-clients-zero", with_plan("--clients", "0"), ("--clients",)),
    Case("opt/simulate-requests-zero", with_plan("--requests", "0"), ("--requests",)),
    Case("opt/simulate-clients-with-rate", with_plan("--clients", "4", "--rate", "5",
                                                     "--requests", "20"),
         (("--clients", "--rate"),)),
    Case("opt/simulate-clients-with-poisson", with_plan("--clients", "4", "--arrivals",
                                                        "poisson", "--requests", "20"),
         (("--clients", "--arrivals"),)),
    Case("opt/simulate-seed-negative", with_plan("--seed", "-1", "--arrivals", "poisson",
                                                 "--requests", "20"), ("--seed",)),
    Case("opt/catalog-only-empty", opts("catalog", "--only", ","), ("--only",)),
    Case("opt/simulate-as-is-with-rate", with_plan("--arrivals", "as-is", "--rate", "5"),
         ("--rate",)),
    Case("opt/simulate-arrivals-nope", with_plan("--arrivals", "nope"), ("--arrivals",)),
    Case("opt/plan-unknown-model", opts("plan", "-m", "gpt-17"), ("gpt-17",)),
    Case("opt/estimate-unknown-accelerator", opts(*E, "--price", "H900=2"), ("H900",)),
    Case("opt/estimate-unknown-workload", opts("estimate", "-m", MODEL, "-w", "azure-chat"),
         ("azure-chat",)),
    Case("opt/plan-only-unknown", opts(*P, "--only", "A10G,NOPE9"), ("NOPE9",)),
    Case("opt/estimate-only-unknown", opts(*E, "--only", "NOPE9"), ("NOPE9",)),
    Case("opt/catalog-only-unknown", opts("catalog", "--only", "L4,NOPE9"), ("NOPE9",)),
    Case("opt/autoscale-window-longer-than-hours", opts("autoscale", "--window", "48h",
                                                        "--hours", "1"),
         ("--window", "--hours"), guard=("hetserve.autoscale:compare_day",), max_seconds=2.0),
    Case("opt/plan-step-margin-over-one", opts(*P, "--step-margin", "5"), ("--step-margin",),
         guard=PLAN_WORK, max_seconds=2.0),
    Case("opt/simulate-step-margin-negative", with_plan("--step-margin", "-0.1"),
         ("--step-margin",)),
    Case("opt/autoscale-step-margin-nan", opts("autoscale", "--hours", "1", "--step-margin",
                                                "nan"),
         ("--step-margin",), guard=("hetserve.autoscale:compare_day",), max_seconds=2.0),
    Case("opt/plan-input-edges-too-many", opts(*P, "--input-edges",
                                               ",".join(map(str, range(1, 20001)))),
         ("--input-edges", "at most"), guard=PLAN_WORK, max_seconds=2.0),
    Case("opt/plan-price-tiny", opts(*P, "--only", "L4", "--price", "L4=1e-300"),
         ("--price", "L4", "0.0001")),
    Case("opt/plan-price-huge", opts(*P, "--only", "L4", "--price", "L4=1e300"),
         ("--price", "L4", "100000")),
    Case("catalog-yaml/price-huge", cat_file(cat_rows(a10g(usd_per_hour=1e300))),
         (FILE, "usd_per_hour")),
    Case("catalog-yaml/spot-price-tiny", cat_file(cat_rows(a10g(spot_usd_per_hour=1e-300))),
         (FILE, "spot_usd_per_hour")),
    Case("opt/catalog-available-twice", opts("catalog", "--available", "L4=3,L4=5"),
         ("--available", "L4", "twice")),
    Case("opt/plan-price-twice", opts(*P, "--price", "L4=1", "--price", "l4=2"),
         ("--price", "L4", "twice")),
    Case("opt/deploy-image-with-spaces", lambda c: [
        "deploy", c.valid_plan(), "--image", "bad image:tag with space", "--out",
        c.missing("")[:-1]], ("--image", "container image")),
    Case("opt/deploy-cluster-not-kubernetes", lambda c: [
        "deploy", c.valid_plan(), "--target", "skypilot", "--cluster", "gke", "--out",
        c.missing("")[:-1]], ("--cluster", "--target kubernetes")),
    Case("plan-file/image-with-spaces", sim_plan(_set_group(image="bad image:tag")),
         (FILE, "image")),
    Case("opt/simulate-workload-missing-file", lambda c: [
        "simulate", c.valid_plan(), "--workload", c.missing("csv")],
        (FILE, "cannot read", "No such file")),
    Case("opt/plan-workload-missing-file-no-folder", lambda c: [*P[:-2], "-w", "nonexist.jsonl"],
         ("nonexist.jsonl: cannot read",)),
    Case("opt/plan-rate-huge", opts(*P[:-2], "--rate", "1e308"), ("--rate", "at most")),
    Case("opt/plan-model-spec-rate-huge", opts("plan", "-m", f"{MODEL}:azure-code:1e300"),
         ("--model", "at most")),
    Case("opt/plan-only-unknown-named", opts(*P, "--only", "FOO"), ("--only: unknown",)),
    Case("opt/plan-price-unknown-named", opts(*P, "--price", "FOO=1"), ("--price: unknown",)),
    Case("opt/emulate-tp-3", opts("emulate", "--model", MODEL, "--accelerator", "L4", "--tp",
                                  "3"), ("--tp", "TP must be 1, 2, 4 or 8")),
    Case("opt/estimate-model-folder", lambda c: [*E, "-m", c.folder()],
         (FILE, "is a folder", "config.json")),
    Case("plan-file/tp-negative", sim_plan(_set_group(tp=-2)), (FILE, "groups.0.tp")),
    Case("opt/plan-target-without-verify", opts(*P, "--target", "0.9"),
         ("--target applies only with --verify",), guard=PLAN_WORK, max_seconds=2.0),
    Case("opt/calibrate-hold-back-without-fit", opts("calibrate", "--hold-back", "0.1"),
         ("--hold-back applies only with --fit",)),
    Case("opt/autoscale-target-without-gateway", opts("autoscale", "--target", "emulate"),
         ("--target applies only with --gateway",), guard=("hetserve.autoscale:compare_day",)),
    Case("opt/autoscale-apply-without-gateway", opts("autoscale", "--apply"),
         ("--apply applies only with --gateway",), guard=("hetserve.autoscale:compare_day",)),
    Case("opt/models-missing-config", lambda c: ["models", "--model",
                                                 c.missing_dir("config.json")],
         (FILE, "cannot read")),
    Case("opt/models-extra-argument", opts("models", "extra"), ("extra",)),
    Case("opt/models-unknown-option", opts("models", "--bogus"), ("--bogus",)),
    # ---- output paths: refused before any work ------------------------------------------------
    Case("out/deploy-out-missing-parent", lambda c: [
        "deploy", c.valid_plan(), "--out", c.missing_dir("manifests")],
        (("--out", FILE), "does not exist")),
    Case("out/deploy-out-is-file", lambda c: [
        "deploy", c.valid_plan(), "--out", c.file("yaml", "x: 1\n")],
        (("--out", FILE), "expected a folder")),
    Case("out/plan-out-missing-folder", lambda c: [*SLOW_PLAN, "--out",
                                                   c.missing_dir("plan.json")],
         (("--out", FILE),), guard=PLAN_WORK, max_seconds=2.0),
    Case("out/plan-out-is-folder", lambda c: [*P, "--out", c.folder("json")],
         (("--out", FILE),), guard=PLAN_WORK, max_seconds=2.0),
    Case("out/plan-plot-missing-folder", lambda c: [*P, "--plot", c.missing_dir("costs.png")],
         (("--plot", FILE),), guard=PLAN_WORK, max_seconds=2.0),
    Case("out/estimate-plot-is-folder", lambda c: [*E, "--plot", c.folder("png")],
         (("--plot", FILE),), guard=EST_WORK, max_seconds=2.0),
    Case("out/simulate-per-request-missing-folder", lambda c: [
        "simulate", c.valid_plan(), "-w", "azure-conv", "--rate", "20", "--compare",
        "--per-request", c.missing_dir("requests.csv")],
        (("--per-request", FILE),), guard=SIM_WORK, max_seconds=2.0),
    Case("out/simulate-plot-is-folder", lambda c: [
        "simulate", c.valid_plan(), "--plot", c.folder("png")],
        (("--plot", FILE),), guard=SIM_WORK, max_seconds=2.0),
    Case("out/plan-plot-txt", lambda c: [*SLOW_PLAN, "--plot", c.missing("txt")],
         (FILE, "--plot", ".png, .pdf or .svg"), guard=PLAN_WORK, max_seconds=2.0),
    Case("out/estimate-plot-txt", lambda c: [*E, "--plot", c.missing("txt")],
         (FILE, "--plot", ".png, .pdf or .svg"), guard=EST_WORK, max_seconds=2.0),
    Case("out/simulate-plot-no-suffix", lambda c: [
        "simulate", c.valid_plan(), "--plot", c.missing("")[:-1]],
        (FILE, "--plot", ".png, .pdf or .svg"), guard=SIM_WORK, max_seconds=2.0),
    Case("out/autoscale-plot-txt", lambda c: ["autoscale", "--plot", c.missing("txt")],
         (FILE, "--plot", ".png, .pdf or .svg"), max_seconds=2.0),
]

assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


def _needs(case: Case, ctx: Ctx) -> tuple:
    def fill(item):
        if isinstance(item, tuple):
            return tuple(fill(x) for x in item)
        return ctx.token if item == FILE else item

    return tuple(fill(n) for n in case.needs)


def _scrub(tmp_path: Path) -> tuple[str, ...]:
    return tuple(dict.fromkeys([str(tmp_path), str(tmp_path.resolve())]))


def _spy(monkeypatch, targets, calls: list) -> None:
    for target in targets:
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        original = getattr(module, attr, None)
        if original is None:
            continue

        def spy(*args, _original=original, _target=target, **kwargs):
            calls.append(_target)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, attr, spy)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, plan_data, estimate_text, run_cli, monkeypatch):
    ctx = Ctx(tmp_path, plan_data, estimate_text)
    argv = [str(a) for a in case.argv(ctx)]
    calls: list[str] = []
    _spy(monkeypatch, case.guard, calls)
    res = (run_subprocess(*argv, timeout=case.timeout, memory_limit=MEMORY_LIMIT)
           if case.timeout else run_cli(*argv))
    also = []
    if calls:
        also.append(f"work started before the output path was refused ({', '.join(calls)})")
    if case.max_seconds is not None and res.seconds > case.max_seconds:
        also.append(f"took {res.seconds:.1f}s (refusing it must come first)")
    assert_bad_input(res, _needs(case, ctx), also, scrub=_scrub(tmp_path))


# ---- the real entry point, for a sample of the corpus -----------------------------------------

SUBPROCESS_SAMPLE = ["trace-csv/binary", "plan-file/shares-sum-to-2", "opt/plan-rate-nan",
                     "melange/empty", "out/plan-out-is-folder", "hf-config/zero-heads"]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS_SAMPLE],
                         ids=lambda c: c.id)
def test_bad_input_subprocess(case: Case, tmp_path, plan_data, estimate_text):
    ctx = Ctx(tmp_path, plan_data, estimate_text)
    res = run_subprocess(*case.argv(ctx), timeout=60)
    assert_bad_input(res, _needs(case, ctx), scrub=_scrub(tmp_path))


# ---- extreme but valid values: a result or a clean exit 2, never a crash or a hang --------------

EXTREMES = [
    ("plan-rate-tiny", lambda c: [*P[:-2], "--rate", "1e-300", "--no-prove"], None),
    ("workload-rate-tiny", opts("workload", "azure-code", "--rate", "1e-320"), None),
    ("estimate-rate-huge", opts(*E[:-2], "-w", "azure-code", "--rate", "1e300"), None),
    ("simulate-rate-huge", with_plan("--rate", "1e300", "--requests", "20"), None),
    ("simulate-requests-huge", with_plan("--requests", str(10**23)), None),
    ("simulate-clients-huge", with_plan("--clients", str(10**12), "--requests", "5"), 30),
    ("plan-max-devices-huge", opts(*P, "--max-devices", str(10**23), "--no-prove"), None),
    ("solve-available-huge", solve(lambda c: c.json(with_(ABSTRACT, gpu_types={
        **ABSTRACT["gpu_types"], "type1": {"price": 4, "available": 10**30}}))), None),
    ("melange-slice-factor-huge", mel(lambda c: c.json(with_(MELANGE, slice_factor=10**9))), 20),
]


@pytest.mark.parametrize("make,timeout", [(m, t) for _, m, t in EXTREMES],
                         ids=[name for name, _, _ in EXTREMES])
def test_extreme_values_never_crash(make, timeout, tmp_path, plan_data, estimate_text, run_cli):
    ctx = Ctx(tmp_path, plan_data, estimate_text)
    argv = make(ctx)
    res = (run_subprocess(*argv, timeout=timeout, memory_limit=MEMORY_LIMIT)
           if timeout else run_cli(*argv))
    assert res.exception is None and res.code in (0, 2), res.summary()
    assert "Traceback" not in res.err + res.out
    if res.code == 2:
        assert_bad_input(res)


def test_no_arguments_is_help_not_error():
    res = run_subprocess()
    assert res.code in (0, 2) and "Traceback" not in res.err and "Usage" in res.out + res.err


# ---- controls: the inputs the corpus mutates are valid as they are ----------------------------


@dataclass(frozen=True)
class Control:
    id: str
    argv: Callable[[Ctx], list]
    check: Callable[[str], bool] = field(default=lambda out: True)


CONTROLS = [
    Control("trace-csv", wl(csv_trace("0,10,5\n1,200,30\n"))),
    Control("trace-jsonl", wl(jl_trace(ROW, with_(ROW, timestamp=1, model=MODEL)))),
    Control("catalog-override", cat_file(cat_rows(a10g(usd_per_hour=0.9)))),
    Control("catalog-new-row", cat_file(cat_rows(new_gpu()))),
    Control("availability-file", avail(lambda c: c.yaml({"A10G": 2}))),
    Control("hf-config", hf_est(HF_CONFIG)),
    Control("plan-file", sim_plan()),
    Control("plan-file-two-groups", sim_plan(lambda d: _second_group(d, "twin", 0.5))),
    Control("plan-file-reshaped", sim_plan(lambda d: _reshape(d, replicas=2))),
    Control("melange", mel(lambda c: c.json(MELANGE))),
    Control("solve", solve(lambda c: c.json(ABSTRACT))),
    Control("calib-csv", cal(cal_row())),
    Control("profile", prof(lambda c: c.json(PROFILE))),
    Control("models-config", lambda c: ["models", "--model", c.hf(HF_CONFIG), "--json"],
            lambda out: len(json.loads(out)) == 1),
    Control("catalog-only", opts("catalog", "--only", "A10G,L4", "--json"),
            lambda out: sorted(r["name"] for r in json.loads(out)) == ["A10G", "L4"]),
    Control("estimate-only", opts(*E, "--only", "L4", "--json"),
            lambda out: {c["accelerator"] for c in json.loads(out)["configs"]} == {"L4"}),
    Control("estimate-available", opts(*E, "--available", "L4=2", "--json")),
    Control("plan-only", opts(*P, "--only", "L4,A10G", "--json"),
            lambda out: {g["accelerator"] for g in json.loads(out)["groups"]} <= {"L4", "A10G"}),
]


@pytest.mark.parametrize("control", CONTROLS, ids=[c.id for c in CONTROLS])
def test_valid_input_control(control, tmp_path, plan_data, estimate_text, run_cli):
    """The unmutated inputs are accepted, so each corpus case fails for its own mutation."""
    res = run_cli(*control.argv(Ctx(tmp_path, plan_data, estimate_text)))
    assert res.code == 0 and res.exception is None, res.summary()
    assert control.check(res.out), res.out[:500]
