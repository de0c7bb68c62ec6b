"""A plan as SkyServe services: one service YAML per replica group (its accelerator by SkyPilot's
name, the cloud, region and instance type where the catalog recorded an offer, a fixed replica
count, a readiness probe on /health, the engine command), and a script that brings them up and
starts hetserve's gateway in front with their endpoints."""

from __future__ import annotations

import shlex

import yaml

from hetserve.deploy import GATEWAY_PORT, Options, command, group_names, nodes_per_replica
from hetserve.errors import HetserveError
from hetserve.plan.planfile import Plan, ReplicaGroup
from hetserve.plan.serving import PORT

STARTUP_SECONDS = 1800  # SkyServe waits this long for a new replica's first ready probe


def service(plan: Plan, g: ReplicaGroup, name: str, opts: Options) -> dict:
    acc = plan.accelerator(g)
    if not acc.names.skypilot:
        raise HetserveError(f"group {g.id} runs on {acc.name}, which has no SkyPilot name in "
                            "the catalog's targets table: plan without it (--only)")
    nodes = nodes_per_replica(plan, g)
    resources: dict = {"accelerators": {acc.names.skypilot: g.devices_per_replica // nodes},
                       "ports": PORT}
    offer = acc.offer_for(g.devices_per_replica // nodes)
    if offer is not None:
        resources.update(cloud=offer.cloud, region=offer.region,
                         instance_type=offer.instance_type)
    argv = command(plan, g, opts)
    if opts.emulate:
        resources["image_id"] = f"docker:{opts.gateway_image}"
        setup = None
    elif g.engine in ("vllm", "vllm-v0") and acc.names.device_resource == "nvidia.com/gpu":
        setup = f"pip install vllm=={g.engine_version}"
    else:
        resources["image_id"] = f"docker:{opts.image or g.image}"
        setup = None
    if nodes > 1:  # the head runs the engine over a Ray cluster of the replica's nodes
        run = ("if [ \"$SKYPILOT_NODE_RANK\" = 0 ]; then ray start --head --port=6379 && "
               + shlex.join([*argv, "--distributed-executor-backend", "ray"])
               + "; else until ray start --address=$(echo \"$SKYPILOT_NODE_IPS\" | head -n1)"
               ":6379 --block; do sleep 5; done; fi")  # the head may not listen yet
    else:
        run = shlex.join(argv)
    task: dict = {
        "name": name,
        "service": {"readiness_probe": {"path": "/health",
                                        "initial_delay_seconds": STARTUP_SECONDS},
                    "replica_policy": {"min_replicas": g.replicas, "max_replicas": g.replicas}},
        "resources": resources,
    }
    if nodes > 1:
        task["num_nodes"] = nodes
    task["envs"] = {"HF_TOKEN": ""}  # up.sh passes the caller's (--env HF_TOKEN)
    if setup:
        task["setup"] = setup
    task["run"] = run
    return task


def instance_notes(plan: Plan) -> list[str]:
    """Groups whose replicas rent more devices than they use: the smallest instance offered
    holds more than a replica's devices (the plan priced only those it uses)."""
    notes = []
    for g in plan.groups:
        acc = plan.accelerator(g)
        per_node = g.devices_per_replica // nodes_per_replica(plan, g)
        offer = acc.offer_for(per_node)
        if offer is not None and offer.gpus > per_node:
            notes.append(f"group {g.id}: {per_node} {acc.name} a replica, but the smallest "
                         f"{offer.cloud} instance with them ({offer.instance_type}) has "
                         f"{offer.gpus}: each replica pays ${offer.usd_per_hour:.2f}/h, the "
                         f"plan counted ${per_node * acc.usd_per_hour:.2f}/h")
    return notes


def render_skypilot(plan: Plan, opts: Options) -> dict[str, str]:
    names = group_names(plan)
    files = {f"{names[g.id]}.yaml": yaml.safe_dump(service(plan, g, names[g.id], opts),
                                                   sort_keys=False, width=100)
             for g in plan.groups}
    lines = ["#!/bin/sh", "# Bring up one SkyServe service per replica group, then hetserve's "
             "gateway in front of them. HF_TOKEN (for gated models) is passed on from here.",
             "set -eu", 'cd "$(dirname "$0")"', ': "${HF_TOKEN:=}"', "export HF_TOKEN",
             "endpoint() {  # a service's URL once its load balancer has one",
             "  for _ in $(seq 360); do",
             '    url=$(sky serve status --endpoint "$1") || url=-',
             '    case "$url" in http://*|https://*) echo "$url"; return 0;; esac',
             "    sleep 10", "  done",
             '  echo "service $1: no endpoint after an hour" >&2; return 1', "}"]
    lines += [f"sky serve up -y -n {names[g.id]} --env HF_TOKEN {names[g.id]}.yaml"
              for g in plan.groups]
    lines.append(": > backends.yaml")
    for g in plan.groups:
        lines.append(f"url=$(endpoint {names[g.id]})")
        lines.append(f'echo "{g.id}: [{{url: $url, replicas: {g.replicas}}}]" >> backends.yaml')
    lines.append(f"exec hetserve serve plan.json --backends backends.yaml --host 0.0.0.0 "
                 f"--port {GATEWAY_PORT}")
    files["up.sh"] = "\n".join(lines) + "\n"
    files["plan.json"] = plan.model_dump_json(indent=1) + "\n"
    return files
