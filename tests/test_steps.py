"""Step times measured on a GPU (profile.steps): the model's prediction of each step shape, the
least-squares fit of the four coefficients, and `hetserve calibrate --data steps.csv [--fit]`."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from hetserve.catalog import Fit, load_catalog
from hetserve.errors import HetserveError
from hetserve.perf import Deployment
from hetserve.profile.fit import with_fit
from hetserve.profile.steps import (
    StepTime,
    fit_steps,
    is_step_file,
    predict_steps,
    read_step_times,
    step_deployment,
)

from .conftest import assert_bad_input

MODEL = "llama-3.1-8b"
TRUTH = Fit(model=MODEL, tp=1, engine="vllm", dtype="bf16", eta_compute=0.55, eta_memory=0.72,
            step_overhead_ms=0.4, seq_host_us=30.0)
SHAPES = ([("prefill", b, n) for b in (1, 4, 16) for n in (128, 1024, 4096)]
          + [("decode", b, c) for b in (1, 8, 32, 128) for c in (256, 2048, 8192)]
          + [("linear", 1, t) for t in (1, 64, 1024, 8192)])


def rows(phases=("prefill", "decode", "linear"), noise=0.0, gpu="H200", seed=0):
    """Step times the model computes with TRUTH's coefficients (times 1 + noise * N(0, 1))."""
    shapes = [s for s in SHAPES if s[0] in phases]
    blank = [StepTime(id=f"{p}-{b}-{n}", gpu=gpu, model=MODEL, dtype="bf16", tp=1, phase=p,
                      batch=b, tokens=n, seconds=1.0) for p, b, n in shapes]
    dep = step_deployment(blank[0], load_catalog())
    seconds = predict_steps(with_fit(dep, TRUTH), blank)
    rng = np.random.default_rng(seed)
    return dep, [r.model_copy(update={"seconds": float(s * (1 + noise * rng.standard_normal()))})
                 for r, s in zip(blank, seconds, strict=True)]


def write(path, steps):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "gpu", "model", "dtype", "tp", "phase", "batch", "tokens", "seconds",
                    "device", "software"])
        for r in steps:
            w.writerow([r.id, r.gpu, r.model, r.dtype, r.tp, r.phase, r.batch, r.tokens,
                        f"{r.seconds:.9g}", "NVIDIA H200", "torch 2.11.0; cuda 13.0"])
    return path


def test_step_shapes_are_the_model_steps():
    """A prefill row is the step of B prompts from an empty cache, a decode row
    Deployment.decode_step_time, a linear row the layers' matmuls: weights read once at small
    token counts, 2 x params FLOPs a token at large ones."""
    dep, steps = rows()
    got = dict(zip([r.id for r in steps], predict_steps(dep, steps), strict=True))
    assert got["decode-8-2048"] == pytest.approx(float(dep.decode_step_time(8, 2048)))
    assert got["prefill-4-1024"] == pytest.approx(float(dep.step_time(
        4096, 4, prefill_pairs=4 * 1024 * 512)))
    m = dep.model
    flops, _, bw = dep._rates
    layers = m.layers * m.layer_params
    assert got["linear-1-1"] == pytest.approx(layers * 2 / bw)  # bf16 weights, read once
    assert got["linear-1-8192"] == pytest.approx(2 * layers * 8192 / flops)


def test_the_fit_recovers_known_coefficients_and_generalises():
    """Step times from known coefficients with 1% noise: the fit gets the efficiencies back
    within 2%, and the small terms (0.4 ms overhead beside a 4.6 ms weight read, 30 us a
    sequence) within a tenth of a millisecond and 15 us; the held-back quarter of the rows
    improves as much as the fitted part."""
    dep, steps = rows(noise=0.01)
    fit, report = fit_steps(dep, steps)
    assert fit.eta_compute == pytest.approx(TRUTH.eta_compute, rel=0.02)
    assert fit.eta_memory == pytest.approx(TRUTH.eta_memory, rel=0.02)
    assert fit.step_overhead_ms == pytest.approx(TRUTH.step_overhead_ms, abs=0.1)
    assert fit.seq_host_us == pytest.approx(TRUTH.seq_host_us, abs=15)
    assert len(report.held_back) == len(steps) // 4
    assert report.before > 0.05 and report.held_back_before > 0.05
    assert report.after < 0.01 and report.held_back_after < 0.015
    # exact rows: exact coefficients
    exact, report = fit_steps(dep, rows()[1], hold_back=0)
    for name in ("eta_compute", "eta_memory", "step_overhead_ms", "seq_host_us"):
        assert getattr(exact, name) == pytest.approx(getattr(TRUTH, name), rel=1e-3), name
    assert report.after < 1e-6 and report.held_back == []


def test_linear_rows_alone_fit_the_efficiencies_and_keep_the_host_terms():
    dep, steps = rows(phases=("linear",))
    fit, _ = fit_steps(dep, steps, hold_back=0)
    assert (fit.eta_compute, fit.eta_memory) == pytest.approx((0.55, 0.72), rel=1e-3)
    eta_c, eta_m, h0, h1 = dep.efficiency
    assert (fit.step_overhead_ms, fit.seq_host_us) == (h0 * 1e3, h1 * 1e6)
    with pytest.raises(HetserveError, match="2 step times to fit 2"):
        fit_steps(dep, steps[:2], hold_back=0)


def test_calibrate_compares_and_fits_a_step_times_file(run_cli, tmp_path):
    """calibrate --data FILE knows a step-times CSV by its columns; --fit writes a catalog that
    then predicts the steps exactly, and the same fit overrides the model in the simulator's
    step time."""
    _, steps = rows()
    data = write(tmp_path / "steps.csv", steps)
    assert is_step_file(data) and len(read_step_times(data)) == len(steps)
    res = run_cli("calibrate", "--data", data, "--json")
    assert res.code == 0, res.summary()
    before = json.loads(res.out)
    assert len(before["points"]) == len(steps) and before["median_abs_error"] > 0.05
    assert {p["id"] for p in before["points"]} == {r.id for r in steps}
    res = run_cli("calibrate", "--fit", "--data", data, "--hold-back", "0", "--json",
                  "--out", tmp_path / "fits.yaml")
    assert res.code == 0, res.summary()
    (group,) = json.loads(res.out)["deployments"]
    assert group["rows"] == len(steps) and group["report"]["after"] < 1e-6
    assert group["fit"]["eta_memory"] == pytest.approx(0.72, rel=1e-3)
    again = run_cli("calibrate", "--data", data, "--catalog", tmp_path / "fits.yaml", "--json")
    assert again.code == 0 and json.loads(again.out)["median_abs_error"] < 1e-6
    text = run_cli("calibrate", "--fit", "--data", data)
    assert text.code == 0 and "least squares on the step times" in text.out
    assert "H200 TP1 llama-3.1-8b bf16 steps" in text.out


def test_a_bad_step_times_file_names_the_line_and_field(run_cli, tmp_path):
    _, steps = rows(phases=("decode",))
    data = write(tmp_path / "steps.csv", steps)
    lines = data.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([*lines[:3], lines[3].replace(",decode,", ",sample,")]) + "\n")
    assert_bad_input(run_cli("calibrate", "--data", bad), needs=["bad.csv", "line 4", "phase"],
                     scrub=[tmp_path])
    bad.write_text("\n".join([*lines[:2], lines[2].replace("H200", "H900")]) + "\n")
    assert_bad_input(run_cli("calibrate", "--fit", "--data", bad), needs=["H900"],
                     scrub=[tmp_path])
    bad.write_text("\n".join([*lines[:3], lines[2]]) + "\n")
    assert_bad_input(run_cli("calibrate", "--data", bad), needs=["bad.csv", "decode-1-2048",
                                                                  "twice"], scrub=[tmp_path])
    bad.write_text("\n".join([lines[0] + ",source", lines[1] + ",",
                              lines[2] + ",dry run: 2 of 32 layers on cpu"]) + "\n")
    assert_bad_input(run_cli("calibrate", "--data", bad), needs=["bad.csv", "dry run"],
                     scrub=[tmp_path])
    bad.write_text(lines[0] + "\n")
    assert_bad_input(run_cli("calibrate", "--data", bad), needs=["bad.csv", "no rows"],
                     scrub=[tmp_path])
    res = run_cli("calibrate", "--data", data, "--engine", "sglang")
    assert_bad_input(res, needs=["--engine sglang"], scrub=[tmp_path])


def test_a_fitted_step_profile_changes_the_deployment_everywhere():
    """The fitted coefficients reach Deployment.step_time (closed form and simulator) through
    the catalog, as a profile's do."""
    dep, steps = rows()
    fit, _ = fit_steps(dep, steps, hold_back=0)
    cat = load_catalog().with_fits([("H200", fit)])
    fitted = Deployment(dep.model, cat.get("H200"))
    assert fitted.step_seconds(8, 8, 8 * 2048) == pytest.approx(
        float(with_fit(dep, TRUTH).decode_step_time(8, 2048)), rel=1e-3)
    assert fitted.step_seconds(8, 8, 8 * 2048) != pytest.approx(dep.step_seconds(8, 8, 8 * 2048),
                                                               rel=0.05)


def test_a_spreadsheet_export_reads_alike(tmp_path):
    """A byte-order mark and spaces after the header's commas (as spreadsheets write them)."""
    _, steps = rows(phases=("decode",))
    text = write(tmp_path / "steps.csv", steps).read_text()
    header, rest = text.split("\n", 1)
    odd = tmp_path / "odd.csv"
    odd.write_text("\ufeff" + header.replace(",", ", ") + "\n" + rest, encoding="utf-8")
    assert is_step_file(odd)
    assert read_step_times(odd) == read_step_times(tmp_path / "steps.csv")


MEASURED = Path(__file__).resolve().parents[1] / "src" / "hetserve" / "perf" / "data" / \
    "step_times.csv"


def test_the_committed_h200_step_times_hold_physically_and_fit():
    """The step times measured on an H200 (benchmarks/gpu_steps.py) are calibration data: every
    row names the GPU and the software that measured it, no step beats the roofline at the
    datasheet's peak FLOP rate and bandwidth, and the fit to them beats the model on both the
    fitted and the held-back shapes. The FP8 rows are the matmuls alone (linear)."""
    steps = read_step_times(MEASURED)
    catalog = load_catalog()
    groups: dict[tuple[str, str], list] = {}
    for r in steps:
        groups.setdefault((r.model, r.dtype), []).append(r)
    assert {k: len(v) for k, v in groups.items()} == {
        ("llama-3.1-8b", "bf16"): 32, ("llama-2-7b", "fp16"): 25, ("qwen2.5-7b", "bf16"): 35,
        ("llama-3.1-8b", "fp8"): 7, ("llama-2-7b", "fp8"): 7, ("qwen2.5-7b", "fp8"): 7}
    for r in steps:
        assert (r.gpu, r.device, r.tp) == ("H200", "NVIDIA H200", 1)
        assert "torch 2." in r.software and "cuda " in r.software and "driver " in r.software
        assert ("FP8 matmuls" in r.source and r.phase == "linear" if r.dtype == "fp8"
                else "SDPA flash_attention" in r.source), r.id
    for (model, dtype), group in groups.items():
        dep = step_deployment(group[0], catalog)
        ideal = with_fit(dep, Fit(model=model, tp=1, engine="vllm", dtype=dtype,
                                  eta_compute=1.0, eta_memory=1.0, step_overhead_ms=0.0,
                                  seq_host_us=0.0))
        measured = np.array([r.seconds for r in group])
        assert (measured >= predict_steps(ideal, group)).all(), model
        fit, report = fit_steps(dep, group)
        assert not report.kept_model, model
        assert report.after < report.before and report.after < 0.05, model
        if dtype != "fp8":  # 7 FP8 rows: too few to hold any back
            assert report.held_back_after < report.held_back_before, model
        assert 0.4 < fit.eta_compute < 0.8 and 0.5 < fit.eta_memory < 0.9, model
