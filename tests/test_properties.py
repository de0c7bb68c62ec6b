"""Property-based tests (hypothesis) for the parsers of user files: traces, the catalog and
availability files, and plan files.

Whatever a file holds, a parser returns its object or raises HetserveError (the CLI's exit 2);
any other exception is a bug. What a parser accepts satisfies the invariants the rest of hetserve
relies on, and valid input round-trips.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import math
from importlib import resources

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hetserve.catalog import load_availability, load_catalog
from hetserve.errors import HetserveError
from hetserve.plan import load_plan
from hetserve.workload import Trace, load_trace, read_azure_csv, read_jsonl

FAST = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(max_examples=50, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_counter = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("props")


def _write(folder, suffix: str, content: str | bytes):
    """A fresh file per example (so nothing can be served from a stale read)."""
    path = folder / f"ex{next(_counter)}{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _parse_or_error(parse, *args, **kwargs):
    """The parser's result, or None when it refused the input with a HetserveError. Any other
    exception propagates and fails the test."""
    try:
        return parse(*args, **kwargs)
    except HetserveError as exc:
        assert str(exc).strip(), "a HetserveError needs a message"
        return None


# ---- strategies ------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)
CELLS = st.sampled_from([
    "", " ", "0", "1", "7", "-1", "0.5", "1.0", "1e3", "1e30", "nan", "NaN", "inf", "-inf",
    "abc", "2023-11-16 18:15:46.6805900", "2024-01-01T00:00:00", "10000001", "99999999999999999",
    '"', '"1"', "\x00", "\u00e9", "1,2", "  12  ", "+3", "0x10", "1_000",
]) | st.text(max_size=6)


@st.composite
def csv_like(draw) -> str:
    header = draw(st.sampled_from([
        "TIMESTAMP,ContextTokens,GeneratedTokens",
        "ContextTokens,TIMESTAMP,GeneratedTokens,Extra",
        "TIMESTAMP,ContextTokens",
        "timestamp,contexttokens,generatedtokens",
        " TIMESTAMP , ContextTokens , GeneratedTokens ",
        "",
    ]))
    rows = draw(st.lists(st.lists(CELLS, max_size=5), max_size=8))
    return header + "\n" + "\n".join(",".join(r) for r in rows) + draw(st.sampled_from(["", "\n"]))


@st.composite
def jsonl_like(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 3))
        if kind == 0:  # a row with random values for the fields
            row = {k: draw(JSON_VALUES) for k in ("timestamp", "input_tokens", "output_tokens")
                   if draw(st.booleans()) or k != "timestamp"}
            if draw(st.booleans()):
                row["model"] = draw(JSON_VALUES)
            lines.append(json.dumps(row))
        elif kind == 1:  # a valid row
            lines.append(json.dumps({"timestamp": draw(st.integers(0, 10**6)),
                                     "input_tokens": draw(st.integers(1, 10**5)),
                                     "output_tokens": draw(st.integers(1, 10**4))}))
        elif kind == 2:  # any JSON
            lines.append(json.dumps(draw(JSON_VALUES)))
        else:  # any text
            lines.append(draw(st.text(max_size=30)).replace("\n", " "))
    return "\n".join(lines)


def _check_trace(trace: Trace) -> None:
    """What every accepted trace guarantees."""
    assert isinstance(trace, Trace)
    n = len(trace)
    assert n >= 1
    assert len(trace.input_tokens) == len(trace.output_tokens) == n
    assert np.all(np.isfinite(trace.arrivals))
    assert trace.arrivals[0] == 0.0
    assert np.all(np.diff(trace.arrivals) >= 0)
    assert np.all(trace.input_tokens >= 1) and np.all(trace.output_tokens >= 1)
    assert trace.duration > 0 and math.isfinite(trace.rate) and trace.rate > 0
    if trace.models is not None:
        assert len(trace.models) == n


# ---- (1) traces ------------------------------------------------------------------------------


@FAST
@given(content=TEXT | st.binary(max_size=300), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_trace_any_content_is_trace_or_error(folder, content, suffix):
    path = _write(folder, suffix, content)
    for parse in (read_azure_csv, read_jsonl, load_trace):
        trace = _parse_or_error(parse, path)
        if trace is not None:
            _check_trace(trace)


@FAST
@given(content=csv_like())
def test_trace_csv_like_is_trace_or_error(folder, content):
    trace = _parse_or_error(read_azure_csv, _write(folder, ".csv", content))
    if trace is not None:
        _check_trace(trace)


@FAST
@given(content=jsonl_like())
def test_trace_jsonl_like_is_trace_or_error(folder, content):
    trace = _parse_or_error(read_jsonl, _write(folder, ".jsonl", content))
    if trace is not None:
        _check_trace(trace)


ROWS = st.lists(
    st.tuples(st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
              st.integers(1, 200_000), st.integers(1, 20_000)),
    min_size=1, max_size=40,
)


def _expected(rows):
    """(arrival, input, output) per request as a parser must return them: sorted by time (ties
    in file order), arrivals counted from the first request."""
    order = sorted(range(len(rows)), key=lambda k: rows[k][0])
    t0 = np.float64(min(r[0] for r in rows))
    return [(float(np.float64(rows[k][0]) - t0), rows[k][1], rows[k][2]) for k in order]


def _as_tuples(trace: Trace):
    return list(zip(trace.arrivals.tolist(), trace.input_tokens.tolist(),
                    trace.output_tokens.tolist(), strict=True))


@FAST
@given(rows=ROWS, shuffle=st.booleans())
def test_trace_csv_round_trip(folder, rows, shuffle):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
    if shuffle:  # columns in another order, and an extra one
        header = ["GeneratedTokens", "note", "TIMESTAMP", "ContextTokens"]
    writer.writerow(header)
    for t, i, o in rows:
        cells = {"TIMESTAMP": repr(t), "ContextTokens": i, "GeneratedTokens": o, "note": "x"}
        writer.writerow([cells[h] for h in header])
    trace = read_azure_csv(_write(folder, ".csv", buf.getvalue()))
    _check_trace(trace)
    assert len(trace) == len(rows)
    assert int(trace.input_tokens.sum()) == sum(r[1] for r in rows)
    assert int(trace.output_tokens.sum()) == sum(r[2] for r in rows)
    assert _as_tuples(trace) == _expected(rows)


@FAST
@given(rows=ROWS, models=st.lists(st.sampled_from(["llama-3.1-8b", "qwen2.5-7b"]),
                                  min_size=40, max_size=40))
def test_trace_jsonl_round_trip(folder, rows, models):
    text = "".join(
        json.dumps({"timestamp": t, "input_tokens": i, "output_tokens": o, "model": m}) + "\n"
        for (t, i, o), m in zip(rows, models[:len(rows)], strict=True))
    trace = load_trace(_write(folder, ".jsonl", text))
    _check_trace(trace)
    assert len(trace) == len(rows)
    assert int(trace.input_tokens.sum()) == sum(r[1] for r in rows)
    assert int(trace.output_tokens.sum()) == sum(r[2] for r in rows)
    assert _as_tuples(trace) == _expected(rows)
    assert trace.models is not None
    assert sorted(map(str, trace.models)) == sorted(models[:len(rows)])


# ---- (2) catalog and availability -------------------------------------------------------------


def _bundled_row(name: str) -> dict:
    path = resources.files("hetserve.catalog") / "data" / "accelerators.yaml"
    rows = yaml.safe_load(path.read_text(encoding="utf-8"))["accelerators"]
    return dict(next(r for r in rows if r["name"] == name))


VALID_ROW = {**_bundled_row("A10G"), "name": "FuzzGPU"}
NUMERIC = [k for k, v in VALID_ROW.items() if isinstance(v, int | float) and
           not isinstance(v, bool)]
NONFINITE = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e400])
BAD_VALUES = st.sampled_from([
    float("nan"), float("inf"), -float("inf"), -1, -0.5, 0, 10**30, 1e308, True, False, None,
    "", "abc", "1.5", [], [1], {}, {"a": 1}, "gpu", 2, 0.5,
]) | JSON_VALUES


def _check_catalog(cat, name: str) -> None:
    acc = cat.get(name)
    for key, value in acc.model_dump().items():
        if isinstance(value, float):
            assert math.isfinite(value), f"{key} = {value} accepted"
    assert acc.kind in ("gpu", "cpu")
    assert acc.memory_gb > 0 and acc.memory_bw_gbs > 0 and acc.bf16_tflops > 0
    assert acc.fp8_tflops is None or acc.fp8_tflops > 0
    assert 0 < acc.eta_compute <= 1 and 0 < acc.eta_memory <= 1
    assert isinstance(acc.max_per_node, int) and acc.max_per_node >= 1
    assert acc.usd_per_hour >= 0 and acc.link_gbs >= 0 and acc.step_overhead_ms >= 0
    assert 0 <= acc.ecc_reserved < 1


@FAST
@given(content=TEXT | st.binary(max_size=200) | JSON_VALUES.map(
    lambda v: yaml.safe_dump(v, allow_unicode=True)))
def test_catalog_any_content_is_catalog_or_error(folder, content):
    path = _write(folder, ".yaml", content)
    cat = _parse_or_error(load_catalog, extra=path)
    if cat is not None:
        for acc in cat:
            _check_catalog(cat, acc.name)
    avail = _parse_or_error(load_availability, path)
    if avail is not None:
        assert all(isinstance(k, str) for k in avail)
        assert all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                   for v in avail.values())


@st.composite
def mutated_row(draw) -> tuple[dict, str]:
    """A catalog row (new, or overriding the bundled A10G) with one to three mutations."""
    override = draw(st.booleans())
    row = copy.deepcopy(VALID_ROW if not override else {"name": "A10G", "usd_per_hour": 1.0,
                                                         "eta_memory": 0.8})
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["set", "numeric", "numeric", "nonfinite", "delete",
                                       "extra"]))
        keys = sorted(k for k in row if k != "name") or ["usd_per_hour"]
        if action == "set":
            row[draw(st.sampled_from(keys))] = draw(BAD_VALUES)
        elif action == "numeric":
            row[draw(st.sampled_from(NUMERIC))] = draw(BAD_VALUES)
        elif action == "nonfinite":
            row[draw(st.sampled_from(NUMERIC))] = draw(NONFINITE)
        elif action == "delete" and len(row) > 1:
            del row[draw(st.sampled_from(keys))]
        else:
            row[draw(st.text(min_size=1, max_size=8))] = draw(JSON_VALUES)
    return row, "A10G" if override else "FuzzGPU"


@FAST
@given(mutated=mutated_row(), wrapped=st.booleans())
def test_catalog_mutated_row_is_catalog_or_error(folder, mutated, wrapped):
    row, name = mutated
    data = {"accelerators": [row]} if wrapped else [row]
    path = _write(folder, ".yaml", yaml.safe_dump(data, allow_unicode=True))
    cat = _parse_or_error(load_catalog, extra=path)
    if cat is not None:
        _check_catalog(cat, name)


@FAST
@given(data=st.dictionaries(st.sampled_from(["A10G", "L4", "H100-SXM", "h100-sxm", "H100",
                                             "nope", "", "1"]) | st.text(max_size=6),
                            BAD_VALUES | st.integers(-3, 10**20), max_size=4))
def test_availability_file_is_mapping_or_error(folder, data):
    path = _write(folder, ".yaml", yaml.safe_dump(data, allow_unicode=True))
    avail = _parse_or_error(load_availability, path)
    if avail is None:
        return
    assert all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in avail.values())
    cat = _parse_or_error(load_catalog, available=avail)
    if cat is not None:
        expected = {}
        for acc_name, count in avail.items():  # names match case-insensitively; later ones win
            expected[cat.get(acc_name).name] = count
        assert {n: cat.availability(n) for n in expected} == expected


# ---- (3) plan files --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan_dict(small_plan) -> dict:
    plan = json.loads(small_plan.read_text())
    assert load_plan(small_plan) is not None  # the unmutated plan loads
    return plan


def _paths(obj, prefix=()):
    """Every path (tuple of keys and indices) into a JSON document, the root excluded."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) \
        else ()
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


def _parent(doc, path):
    for key in path[:-1]:
        doc = doc[key]
    return doc


def _check_plan(plan) -> None:
    """Invariants of every plan that loads."""
    ids = [g.id for g in plan.groups]
    assert len(ids) == len(set(ids)), f"duplicate group ids {ids}"
    for g in plan.groups:
        assert g.devices_per_replica == g.tp * g.pp, g.id
        assert g.replicas >= 1 and g.tp >= 1 and g.pp >= 1
        assert all(math.isfinite(v) and 0 <= v <= 1 + 1e-6 for v in g.shares.values()), g.id
        assert math.isfinite(g.usd_per_hour) and g.usd_per_hour >= 0
    assert math.isfinite(plan.usd_per_hour)
    for m in plan.models:
        groups = [g for g in plan.groups if g.model == m.name]
        for c in m.classes:
            assert math.isfinite(c.rate) and c.rate >= 0
            if c.rate > 0:
                routed = sum(g.shares.get(c.name, 0.0) for g in groups)
                assert abs(routed - 1.0) <= 1e-6, f"{m.name} {c.name}: shares sum to {routed}"


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@st.composite
def mutated_plan(draw, base: dict) -> dict:
    """One to three mutations: delete a key, replace a value with any JSON value, set a number
    to another plausible number, scale a share, drop a share, or copy a group."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        action = draw(st.sampled_from(["delete", "replace", "number", "number", "share",
                                       "share", "drop-share", "copy-group"]))
        groups = doc.get("groups") if isinstance(doc.get("groups"), list) else []
        if action == "number":
            numbers = [p for p in paths if _is_number(_parent(doc, p)[p[-1]])]
            if numbers:
                path = draw(st.sampled_from(numbers))
                old = _parent(doc, path)[path[-1]]
                new = draw(st.sampled_from([0, 1, 2, 3, 4, 8, -1]) if isinstance(old, int)
                           else st.sampled_from([0.0, -1.0, 0.5, 2.0, 1e-9, 1e9]).map(
                               lambda f, old=old: old * f))
                _parent(doc, path)[path[-1]] = new
                continue
        if action == "drop-share" and groups:
            g = draw(st.sampled_from(groups))
            if isinstance(g, dict) and isinstance(g.get("shares"), dict) and g["shares"]:
                del g["shares"][draw(st.sampled_from(sorted(g["shares"])))]
                continue
        if action == "copy-group" and groups:
            twin = copy.deepcopy(draw(st.sampled_from(groups)))
            if isinstance(twin, dict) and draw(st.booleans()):
                twin["id"] = f"{twin.get('id')}-copy"
            groups.append(twin)
            continue
        if action == "share" and groups:
            g = draw(st.sampled_from(groups))
            if isinstance(g, dict) and isinstance(g.get("shares"), dict) and g["shares"]:
                name = draw(st.sampled_from(sorted(g["shares"])))
                factor = draw(st.sampled_from([0.0, 0.5, 0.999999, 1.0000001, 1.5, 2.0, -1.0])
                              | st.floats(0, 3))
                if isinstance(g["shares"][name], int | float):
                    g["shares"][name] = g["shares"][name] * factor
                continue
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(doc, path)
        if action == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return doc


@FEW
@given(data=st.data())
def test_plan_mutations_load_or_error(folder, plan_dict, data):
    doc = data.draw(mutated_plan(plan_dict))
    path = _write(folder, ".json", json.dumps(doc))
    plan = _parse_or_error(load_plan, path)
    if plan is not None:
        _check_plan(plan)


@FEW
@given(data=st.data())
def test_plan_share_scaling_is_refused_unless_harmless(folder, plan_dict, data):
    """Scaling one share of a single-group class by a factor != 1 breaks the sum to 1."""
    doc = copy.deepcopy(plan_dict)
    g = data.draw(st.sampled_from(doc["groups"]))
    name = data.draw(st.sampled_from(sorted(g["shares"])))
    factor = data.draw(st.floats(0, 3).filter(lambda f: abs(f - 1) > 1e-3))
    assume(len([x for x in doc["groups"] if name in x["shares"]]) == 1)
    rate = {c["name"]: c["rate"] for m in doc["models"] for c in m["classes"]}[name]
    assume(rate > 0)
    g["shares"][name] *= factor
    plan = _parse_or_error(load_plan, _write(folder, ".json", json.dumps(doc)))
    assert plan is None, f"share of {name} scaled by {factor} was accepted"


@FEW
@given(split=st.floats(0.01, 0.99))
def test_plan_split_group_is_accepted(folder, plan_dict, split):
    """A valid variation (a group split into two copies sharing each class) still loads: the
    validation is not stricter than the contract."""
    doc = copy.deepcopy(plan_dict)
    g = doc["groups"][0]
    twin = copy.deepcopy(g)
    twin["id"] = g["id"] + "-b"
    for name in g["shares"]:
        g["shares"][name], twin["shares"][name] = (g["shares"][name] * split,
                                                   g["shares"][name] * (1 - split))
    doc["groups"].append(twin)
    old = doc["usd_per_hour"]
    doc["usd_per_hour"] = sum(x["usd_per_hour"] for x in doc["groups"])
    if doc.get("tokens_per_dollar"):
        doc["tokens_per_dollar"] *= old / doc["usd_per_hour"]
    plan = load_plan(_write(folder, ".json", json.dumps(doc)))
    _check_plan(plan)
    assert len(plan.groups) == len(plan_dict["groups"]) + 1
