"""A plan as a Ray Serve config (`serve deploy serve.yaml`): one application per replica group,
its replicas placed on nodes with the group's accelerator_type and running the engine command,
and hetserve's gateway as the ingress at `/`, routing by the plan to the groups' routes."""

from __future__ import annotations

import yaml

from hetserve.deploy import Options, command, group_names, nodes_per_replica
from hetserve.errors import HetserveError
from hetserve.gateway.server import QUEUE_FACTOR
from hetserve.plan.planfile import Plan

APP = "hetserve.deploy.rayserve_app:app"  # each application: a process behind a Serve deployment
DEPLOYMENT = "Process"
HTTP_PORT = 8000
GATEWAY_CONCURRENCY = 10_000  # requests in flight at the gateway's replica


def serve_config(plan: Plan, opts: Options) -> dict:
    port = int(opts.extra.get("http_port", HTTP_PORT))
    names = group_names(plan)
    apps = []
    for g in plan.groups:
        acc = plan.accelerator(g)
        if nodes_per_replica(plan, g) > 1:
            raise HetserveError(f"group {g.id}: a replica of {g.devices_per_replica} "
                                f"{acc.name} spans nodes; --target ray renders single-node "
                                "replicas only (use --target kubernetes: a LeaderWorkerSet)")
        if not acc.names.ray:
            raise HetserveError(f"group {g.id} runs on {acc.name}, which has no Ray "
                                "accelerator_type in the catalog's targets table")
        apps.append({
            "name": names[g.id], "route_prefix": f"/{names[g.id]}", "import_path": APP,
            "args": {"command": command(plan, g, opts)},
            "deployments": [{
                "name": DEPLOYMENT, "num_replicas": g.replicas,
                # as many as the gateway sends one replica (its batch and as many waiting)
                "max_ongoing_requests": int(QUEUE_FACTOR * g.max_num_seqs),
                "ray_actor_options": {"num_cpus": 1, "num_gpus": g.devices_per_replica,
                                      "accelerator_type": acc.names.ray},
                "health_check_period_s": 10, "health_check_timeout_s": 30,
                "graceful_shutdown_timeout_s": 60}]})
    backends = {g.id: [{"url": f"http://127.0.0.1:{port}/{names[g.id]}",
                        "replicas": g.replicas}] for g in plan.groups}
    apps.append({
        "name": "gateway", "route_prefix": "/", "import_path": APP,
        "args": {"command": ["hetserve", "serve", "{dir}/plan.json", "--backends",
                             "{dir}/backends.yaml", "--host", "127.0.0.1", "--port", "0"],
                 "files": {"plan.json": plan.model_dump_json(),
                           "backends.yaml": yaml.safe_dump(backends, sort_keys=False)}},
        "deployments": [{"name": DEPLOYMENT, "num_replicas": 1,
                         "max_ongoing_requests": GATEWAY_CONCURRENCY,
                         "ray_actor_options": {"num_cpus": 1}}]})
    return {"proxy_location": "EveryNode",
            "http_options": {"host": "0.0.0.0", "port": port},
            "applications": apps}


def render_ray(plan: Plan, opts: Options) -> dict[str, str]:
    return {"serve.yaml": yaml.safe_dump(serve_config(plan, opts), sort_keys=False, width=100)}
