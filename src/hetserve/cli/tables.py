"""Rich tables for CLI output."""

from __future__ import annotations

import numpy as np
from rich.table import Table

from hetserve.perf.estimate import Estimate
from hetserve.perf.model import margin_pct
from hetserve.sim.report import SimResult


def _mtok(x: float) -> str:
    return f"{x / 1e6:.2f}" if x > 0 else "-"


def mix_tokens_per_dollar(est: Estimate) -> np.ndarray:
    """Per config: tokens per dollar if it alone served the whole class mix (0: it cannot)."""
    rates = np.array([c.rate for c in est.workload.classes])
    tokens = np.array([c.mean_input + c.mean_output for c in est.workload.classes])
    out = np.zeros(len(est.configs))
    for i, dep in enumerate(est.configs):
        cap = est.rate[i]
        if (cap <= 0).any():
            continue
        replicas = float(np.sum(rates / cap))
        out[i] = float(np.sum(rates * tokens)) * 3600.0 / (replicas * dep.usd_per_hour)
    return out


def estimate_tables(est: Estimate) -> list[Table]:
    wl = est.workload
    slo = est.slo
    title = (f"{est.model.name} on {wl.name} ({len(wl.trace)} requests, {wl.rate:.2f} req/s), "
             f"{slo.quantile * 100:.3g}% of requests within TTFT {slo.ttft:g}s and TPOT "
             f"{slo.tpot * 1e3:g}ms: "
             "most cost-efficient accelerator per request class")
    best = Table(title=title, title_justify="left")
    for col in ("class", "req %", "req/s", "best", "req/s/replica", "Mtok/$", "runner-up type",
                "its Mtok/$", "gain"):
        best.add_column(col, justify="left" if col in ("class", "best", "runner-up type")
                        else "right", no_wrap=col in ("class", "best", "runner-up type"))
    total = len(wl.trace)
    for j, c in enumerate(wl.classes):
        b = int(est.best[j])
        if b < 0:
            best.add_row(c.name, f"{100 * c.count / total:.1f}", f"{c.rate:.3f}",
                         "[red]none meets the SLO[/]", "", "", "", "", "")
            continue
        win = est.configs[b]
        others = [i for i, d in enumerate(est.configs)
                  if d.accelerator.name != win.accelerator.name and est.rate[i, j] > 0]
        second = max(others, key=lambda i: est.tokens_per_dollar[i, j]) if others else None
        tpd = est.tokens_per_dollar[b, j]
        row = [c.name, f"{100 * c.count / total:.1f}", f"{c.rate:.3f}", win.label,
               f"{est.rate[b, j]:.2f}", _mtok(tpd)]
        if second is None:
            row += ["(only one)", "", ""]
        else:
            t2 = est.tokens_per_dollar[second, j]
            row += [est.configs[second].label, _mtok(t2), f"{tpd / t2 - 1:+.0%}"]
        best.add_row(*row)

    mix = mix_tokens_per_dollar(est)
    wins = np.bincount(est.best[est.best >= 0], minlength=len(est.configs))
    req_share = np.zeros(len(est.configs))
    for j, c in enumerate(wl.classes):
        if est.best[j] >= 0:
            req_share[est.best[j]] += c.count / total
    shown = []
    for acc in dict.fromkeys(d.accelerator.name for d in est.configs):
        idx = [i for i, d in enumerate(est.configs) if d.accelerator.name == acc]
        top = max(idx, key=lambda i: (mix[i], (est.rate[i] > 0).sum()))
        shown += [i for i in idx if i == top or wins[i] > 0]
    shown.sort(key=lambda i: -mix[i])
    configs = Table(
        title=f"Per config: the whole mix on one type ({len(est.configs)} configs fit; best TP per "
        "accelerator and every class winner shown, --json for all)",
        title_justify="left",
    )
    for col in ("config", "$/h", "KV tokens", "classes served", "best for", "mix Mtok/$"):
        configs.add_column(col, justify="left" if col == "config" else "right")
    n = len(wl.classes)
    for i in shown:
        d = est.configs[i]
        configs.add_row(d.label, f"{d.usd_per_hour:.2f}", f"{d.kv_capacity_tokens:,}",
                        f"{int((est.rate[i] > 0).sum())}/{n}",
                        f"{wins[i]} cls, {100 * req_share[i]:.0f}% req" if wins[i] else "",
                        _mtok(mix[i]))
    return [best, configs]


def plan_tables(plan) -> list[Table]:
    """Replica groups and baselines of a plan."""
    models = "; ".join(
        f"{m.name} on {m.workload} at {m.rate * plan.scale:.3g} req/s "
        + (f"with bursts up to x{m.burst:.2f} " if m.burst > 1.005 else "")
        + f"(TTFT <= {m.slo.ttft:g}s, TPOT <= {m.slo.tpot * 1e3:g}ms)" for m in plan.models)
    groups = Table(title=f"Plan ({plan.objective}): {models}", title_justify="left")
    for col in ("group", "model", "replica", "TP", "PP", "replicas", "$/h", "classes served"):
        groups.add_column(col, justify="left" if col in ("group", "model", "replica",
                                                         "classes served") else "right")
    for g in plan.groups:
        shares = sorted(g.shares.items(), key=lambda kv: -kv[1])
        top = ", ".join(f"{name} {share:.0%}" for name, share in shares[:4])
        more = f" +{len(shares) - 4} more" if len(shares) > 4 else ""
        groups.add_row(g.id, g.model, f"{g.devices_per_replica} x {g.accelerator}", str(g.tp),
                       str(g.pp), str(g.replicas), f"{g.usd_per_hour:.2f}", top + more)
    summary = (f"total ${plan.usd_per_hour:.2f}/h, {plan.tokens_per_dollar / 1e6:.2f}M tokens "
               f"per dollar")
    if plan.objective == "throughput":
        summary += f", {plan.scale:.3g}x the given rate"
    target = min(m.attainment for m in plan.models)
    misses = plan.misses
    if plan.slo_attainment is not None:
        several = len(plan.models) > 1 and plan.model_attainment
        each = f" ({by_model(plan.model_attainment)})" if several else ""
        mark = "meets" if not misses else "[red]misses[/]"
        whose = f" for {', '.join(misses)}" if misses and several else ""
        slower = slower_steps({m.name: m.step_margin for m in plan.models})
        slower = f" with {slower}" if slower else ""
        summary += (f"; simulated on its trace{slower}: {plan.slo_attainment:.2%} of requests "
                    f"within the SLO{each} ({mark} the {target_pct(target)} target{whose})")
    if plan.savings is not None:
        word = "cheaper than" if plan.objective == "cost" else "more throughput than"
        proven = ", both proven in simulation" if plan.slo_attainment is not None else ""
        summary += (f"; {plan.savings:.1%} {word} the best homogeneous plan "
                    f"({plan.best_homogeneous}{proven})")
    elif plan.slo_attainment is not None and plan.baselines:
        summary += ("; no saving quoted: that needs this plan and a baseline to meet the target"
                    + (" for every model" if len(plan.models) > 1 else ""))
    for m in plan.models:
        if m.best_effort:
            held = sum(c.rate for c in m.classes if c.name in m.best_effort) / sum(
                c.rate for c in m.classes)
            summary += (f"; {m.name} serves {', '.join(m.best_effort)} best effort ({held:.2%} "
                        f"of its requests, no latency promise; attainment target "
                        f"{target_pct(m.attainment)})")
    s = plan.solver
    proof = (f"within ${s.abs_gap:.4f}/h of the optimum" if plan.objective == "cost"
             else f"gap {s.gap:.1e}")
    summary += (f"; HiGHS {s.status}, {proof}, {s.seconds:.2f}s over {s.configs} configs "
                f"x {s.classes} classes")
    v = plan.verification
    if v is not None and plan.slo_attainment is not None:
        summary += f"; verified: round {v.chosen} of {v.rounds}"
    elif v is not None:
        summary += (f"; simulated: {v.slo_attainment:.2%} of requests within the SLO (target "
                    f"{target_pct(v.target)}, round {v.chosen} of {v.rounds})")
    groups.caption = summary
    groups.caption_justify = "left"
    note = "" if v is None else ", capacities lowered as --verify found"
    base = Table(title=f"Homogeneous baselines (same solver, one accelerator type{note})",
                 title_justify="left")
    gain = "the plan saves" if plan.objective == "cost" else "the plan gains"
    for col in ("accelerator", "$/h", "devices", "scale", "in SLO", gain):
        base.add_column(col, justify="left" if col == "accelerator" else "right")
    rows = sorted(plan.baselines, key=lambda b: (b.usd_per_hour is None, b.usd_per_hour or 0))
    for b in rows:
        if b.usd_per_hour is None:
            base.add_row(b.accelerator, "-", "-", "-", "-", b.reason)
            continue
        held = "-" if b.slo_attainment is None else f"{b.slo_attainment:.1%}"
        short = plan.short_of_target(b.slo_attainment, b.model_attainment)
        if short:
            several = len(plan.models) > 1 and b.model_attainment
            held = f"[red]{held}" + (f" ({by_model(short, 1)})" if several else "") + "[/]"
        # as the summary quotes the saving: cost 1 - plan / baseline, throughput plan /
        # baseline - 1 (negative: the baseline is cheaper, or serves more)
        if plan.objective == "cost":
            vs = f"{1 - plan.usd_per_hour / b.usd_per_hour:.1%}"
        else:
            vs = f"{plan.scale / b.scale - 1:.1%}"
        base.add_row(b.accelerator, f"{b.usd_per_hour:.2f}", str(b.devices), f"{b.scale:.3g}",
                     held, vs)
    return [groups, base]


def _ms(x: float) -> str:
    return "-" if x != x else f"{x * 1e3:.0f}"


def _s(x: float) -> str:
    if x != x:
        return "-"
    return f"{x:.2f}" if x < 10 else (f"{x:.1f}" if x < 100 else f"{x:.0f}")


def by_model(shares: dict[str, float], digits: int = 2) -> str:
    """Per-model attainment as 'llama-3.1-8b 98.50%, llama-3.1-70b 99.97%'."""
    return ", ".join(f"{name} {share:.{digits}%}" for name, share in shares.items())


def target_pct(x: float) -> str:
    """An attainment target as a percentage with the digits it has (99%, 99.9%)."""
    return f"{x * 100:.10g}%"


def _pct(x: float) -> str:
    return "-" if x != x else f"{x:.1%}"


def slower_steps(margins: dict[str, float]) -> str:
    """How much slower than modelled each model's engines step (step margins by model), in
    words; '' when none is."""
    if not any(margins.values()):
        return ""
    if len(set(margins.values())) == 1:
        return f"every step {margin_pct(next(iter(margins.values())))} slower than modelled"
    return ("steps " + ", ".join(f"{m} {margin_pct(x)}" for m, x in margins.items())
            + " slower than modelled")


def sim_tables(results: list[SimResult], slo: str) -> list[Table]:
    """One summary row per run (router), then per group and per class of the first run."""
    arrivals = ", ".join(dict.fromkeys(r.arrivals for r in results))
    first = results[0].summary()
    slower = slower_steps(first["step_margin"])
    slower = f"; {slower} (--step-margin)" if slower else ""
    head = Table(title=f"Simulation ({slo}; arrivals: {arrivals}, {first['offered_rate']:.3g} "
                 f"req/s over {first['billed_seconds']:.0f} s{slower})", title_justify="left")
    for col in ("router", "req", "rej", "in SLO", "TTFT s p50/90/99", "TPOT ms p50/90/99",
                "queue p90 s", "preempt", "util", "KV", "cost $", "Mtok/$", "sim s", "wall s"):
        head.add_column(col, justify="left" if col == "router" else "right", no_wrap=True)
    for r in results:
        s = r.summary()
        head.add_row(
            r.router, str(s["requests"]), str(s["rejected"]), _pct(s["slo_attainment"]),
            "/".join(_s(s[f"ttft_p{q}"]) for q in (50, 90, 99)),
            "/".join(_ms(s[f"tpot_p{q}"]) for q in (50, 90, 99)), _s(s["queue_p90"]),
            str(s["preemptions"]), _pct(s["utilisation"]), _pct(s["kv_usage"]),
            f"{s['cost_usd']:.2f}", _mtok(s["tokens_per_dollar"]),
            f"{s['simulated_seconds']:.0f}", f"{s['wall_seconds']:.2f}")
    first = results[0]
    groups = Table(title=f"Per replica group (router {first.router})", title_justify="left")
    for col in ("group", "config", "replicas", "requests", "in SLO", "TTFT s p50/90/99",
                "TPOT ms p50/90/99", "queue p90 s", "preempt", "util", "KV", "$/h"):
        groups.add_column(col, justify="left" if col in ("group", "config") else "right",
                          no_wrap=True)
    for g in first.group_rows():
        groups.add_row(
            g["group"], g["config"], str(g["replicas"]), str(g["requests"]),
            _pct(g["slo_attainment"]),
            "/".join(_s(g[f"ttft_p{q}"]) for q in (50, 90, 99)),
            "/".join(_ms(g[f"tpot_p{q}"]) for q in (50, 90, 99)), _s(g["queue_p90"]),
            str(g["preemptions"]), _pct(g["utilisation"]), _pct(g["kv_usage"]),
            f"{g['usd_per_hour']:.2f}")
    classes = Table(title="Per request class", title_justify="left")
    for col in ("class", "requests", "in SLO", "TTFT p90 s", "TPOT p90 ms", "e2e p90 s",
                "queue p90 s"):
        classes.add_column(col, justify="left" if col == "class" else "right")
    for c in first.class_rows():
        style = "red" if c["slo_attainment"] < 0.9 else ""
        att = _pct(c["slo_attainment"])
        classes.add_row(c["class"], str(c["requests"]), f"[{style}]{att}[/]" if style else att,
                        _s(c["ttft_p90"]), _ms(c["tpot_p90"]), _s(c["e2e_p90"]),
                        _s(c["queue_p90"]))
    return [head, groups, classes]


def profile_tables(prof, dep) -> list[Table]:
    """A profile's measured points and imported capacities against the model's defaults and
    the fit."""
    tables = [_points_table(prof, dep)] if prof.points or not prof.capacities else []
    if prof.capacities:
        tables.append(_capacity_table(prof, dep))
    return tables


def _fit_caption(prof) -> str:
    fit, r = prof.fit, prof.fit_report
    if fit is None:
        return ""
    caption = (f"fit: eta_compute {fit.eta_compute:.3f}, eta_memory {fit.eta_memory:.3f}, "
               f"step overhead {fit.step_overhead_ms:.2f} ms, host {fit.seq_host_us:.0f} us "
               f"per sequence; the client adds {r.client_latency_ms:.1f} ms. Median "
               f"|error| {r.before:.1%} with the model's defaults, {r.after:.1%} fitted")
    if r.held_back_after is not None:
        caption += (f"; on {len(r.held_back)} held-back shapes {r.held_back_before:.1%} -> "
                    f"{r.held_back_after:.1%} (* held back from the fit)")
    if r.kept_model:
        caption = (caption.replace("fit: ", "the model's coefficients kept: ", 1)
                   .replace(" fitted", " with the fit found", 1)
                   + f". [yellow]The fit found was not used: {r.kept_model}[/]")
    return caption


def _capacity_table(prof, dep) -> Table:
    from hetserve.profile.fit import with_fit
    from hetserve.profile.report import capacity_rows

    table = Table(title=f"{prof.model} on {dep.label}: capacities imported from "
                  f"{prof.endpoint}", caption=_fit_caption(prof) if not prof.points else "",
                  title_justify="left", caption_justify="left")
    for col in ("prompt/output tokens", "SLO", "req/s measured", "model", "fitted"):
        table.add_column(col, justify="left" if col in ("prompt/output tokens", "SLO")
                         else "right", no_wrap=True)
    held = set(prof.fit_report.held_back) if prof.fit_report else set()
    fitted = with_fit(dep, prof.fit) if prof.fit is not None else None
    for c, model, tuned in capacity_rows(prof, dep, fitted):
        ttft, tpot, q = c.slo
        slo = (f"TTFT {ttft:g}s " if ttft < float("inf") else "") + \
            (f"TPOT {tpot * 1e3:g}ms " if tpot < float("inf") else "") + f"@{q:g}"
        cells = [f"{c.input_tokens}/{c.output_tokens}" + (" *" if c.label in held else ""),
                 slo, f"{c.rate:.2f}"]
        for pred in (model, tuned):
            if pred is None:
                cells.append("-")
            elif c.rate > 0:
                cells.append(f"{pred:.2f} ({pred / c.rate - 1:+.0%})")
            else:
                cells.append(f"{pred:.2f}")
        table.add_row(*cells)
    return table


def _points_table(prof, dep) -> Table:
    """Measured against predicted, per profile point: the model's defaults and the fit."""
    from hetserve.profile.report import METRICS, rows

    fit = prof.fit
    title = f"{prof.model} on {dep.label} ({prof.engine}), {len(prof.points)} points"
    if not prof.complete:
        title += f" [red]partial: {prof.failure}[/]"
    caption = _fit_caption(prof)
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    table.add_column("point", no_wrap=True)
    names = {"ttft": "TTFT ms", "itl": "ITL ms", "output_throughput": "tok/s"}
    for m in METRICS:
        for what in ("measured", "model", "fitted"):
            if what == "fitted" and fit is None:
                continue
            table.add_column(f"{names[m]} {what}", justify="right")
    for row in rows(prof, dep):
        cells = [row.point.label + (" *" if fit and row.point.label
                                    in prof.fit_report.held_back else "")]
        for m in METRICS:
            scale = 1e3 if m != "output_throughput" else 1.0
            cells.append(f"{row.measured[m] * scale:.1f}")
            for pred in (row.model, row.fitted):
                if pred is None:
                    continue
                err = pred[m] / row.measured[m] - 1.0 if row.measured[m] > 0 else 0.0
                cells.append(f"{pred[m] * scale:.1f} ({err:+.0%})")
        table.add_row(*cells)
    return table


def autoscale_table(results, hours: float, demand, shaped: bool = True) -> Table:
    """One row per policy: the day's cost, SLO attainment and plan changes."""
    base = results[0]
    how = "shaped into a diurnal day" if shaped else "as recorded"
    table = Table(title=f"{hours:.3g} h of {demand.workload.name} {how}, for "
                        f"{demand.model.name}, TTFT {demand.slo.ttft:g} s, TPOT "
                        f"{demand.slo.tpot * 1e3:g} ms", title_justify="left")
    for col in ("policy", "cost $", "vs adaptive", "in SLO", "worst window", "changes",
                "replay s"):
        table.add_column(col, justify="left" if col == "policy" else "right",
                         no_wrap=col == "policy")
    for r in results:
        worst = min((w.met / w.requests for w in r.windows if w.requests), default=1.0)
        vs = "" if r is base else f"{r.cost_usd / base.cost_usd - 1:+.1%}"
        att = f"{r.attainment:.2%}"
        table.add_row(r.policy, f"{r.cost_usd:,.2f}", vs,
                      att if r.attainment >= 0.99 else f"[red]{att}[/red]", f"{worst:.1%}",
                      str(r.changes), f"{r.wall_seconds:.1f}")
    return table
