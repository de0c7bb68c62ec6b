"""A Grafana dashboard (JSON model) for a deployed plan, over the gateway's and engines' metrics:
request rate, realised against planned share, latency percentiles per replica group, SLO
attainment against the plan's target, cost per hour, refusals, and the engines' batches."""

from __future__ import annotations

from hetserve.plan.planfile import Plan

DS = {"type": "prometheus", "uid": "${datasource}"}
WINDOW = "5m"


def _panel(k: int, title: str, targets: list[tuple[str, str]], unit: str) -> dict:
    """One time-series panel; `targets` are (PromQL, legend) pairs; panels flow two a row."""
    return {
        "id": k + 1, "type": "timeseries", "title": title, "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": (k % 2) * 12, "y": (k // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr,
                     "legendFormat": legend} for i, (expr, legend) in enumerate(targets)],
    }


def _quantiles(metric: str) -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by (le, group) (rate({metric}_bucket[{WINDOW}])))",
             f"{{{{group}}}} p{int(q * 100)}") for q in (0.5, 0.9, 0.99)]


def dashboard(plan: Plan) -> dict:
    target = min(m.attainment for m in plan.models)
    slo = "; ".join(f"{m.name}: TTFT {m.slo.ttft:g} s, TPOT {m.slo.tpot * 1e3:g} ms"
                    for m in plan.models)
    groups = ", ".join(f"{g.id} = {g.replicas}x {g.accelerator} TP{g.tp}" for g in plan.groups)
    met = 'hetserve:slo_requests_total{met="true"}'
    specs = [
        ("Requests per second, by group",
         [(f"sum by (group) (rate(hetserve:requests_total[{WINDOW}]))", "{{group}}")], "reqps"),
        ("Share of requests: realised against planned",
         [("sum by (group) (hetserve:group_share)", "{{group}} realised"),
          ("sum by (group) (hetserve:planned_share)", "{{group}} planned")], "percentunit"),
        ("SLO attainment (streamed requests within TTFT and TPOT; each model must reach "
         "the target)",
         [(f"sum(rate({met}[1h])) / sum(rate(hetserve:slo_requests_total[1h]))", "all"),
          (f"sum by (model) (rate({met}[1h])) / sum by (model) "
           "(rate(hetserve:slo_requests_total[1h]))", "{{model}}"),
          (f"sum by (group) (rate({met}[1h])) / sum by (group) "
           "(rate(hetserve:slo_requests_total[1h]))", "{{group}}")], "percentunit"),
        ("Cost per hour", [("sum(hetserve:group_usd_per_hour)", "plan"),
                           ("sum by (accelerator) (hetserve:group_usd_per_hour)",
                            "{{accelerator}}")], "currencyUSD"),
        ("Time to first token, by group", _quantiles("hetserve:time_to_first_token_seconds"),
         "s"),
        ("Time per output token, by group",
         _quantiles("hetserve:time_per_output_token_seconds"), "s"),
        ("End-to-end latency, by group", _quantiles("hetserve:request_latency_seconds"), "s"),
        ("Errors and refusals",
         [(f"sum by (group, outcome) (rate(hetserve:requests_total{{outcome!=\"ok\"}}"
           f"[{WINDOW}]))", "{{group}} {{outcome}}"),
          (f"sum by (status) (rate(hetserve:refused_total[{WINDOW}]))", "refused {{status}}"),
          (f"sum(rate(hetserve:retries_total[{WINDOW}]))", "retried")], "reqps"),
        ("Engines: running and waiting requests",
         [("sum by (service) (vllm:num_requests_running)", "{{service}} running"),
          ("sum by (service) (vllm:num_requests_waiting)", "{{service}} waiting")], "short"),
        ("Engines: KV cache used", [("max by (service) (vllm:kv_cache_usage_perc)",
                                     "{{service}}")], "percentunit"),
        ("Replicas: found by DNS and healthy, by group",
         [("sum by (group) (hetserve:discovered_replicas)", "{{group}} found"),
          ("sum by (group) (hetserve:replica_healthy)", "{{group}} healthy")], "short"),
    ]
    panels = [_panel(k, title, targets, unit) for k, (title, targets, unit) in enumerate(specs)]
    panels[2]["fieldConfig"]["defaults"].update(
        min=0, max=1, thresholds={"mode": "absolute", "steps": [
            {"color": "red", "value": None}, {"color": "green", "value": target}]})
    return {
        "title": "hetserve: " + ", ".join(m.name for m in plan.models),
        "uid": "hetserve-plan", "tags": ["hetserve", "llm"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "refresh": "30s", "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "description": f"Plan ${plan.usd_per_hour:.2f}/h; SLO {slo}; attainment target "
                       f"{target:.0%}; groups {groups}",
        "templating": {"list": [{"name": "datasource", "type": "datasource",
                                 "query": "prometheus", "label": "Prometheus"}]},
        "annotations": {"list": []},
        "panels": panels,
    }
