"""From one deployed plan to the next on Kubernetes: the fewest commands, new capacity first.

Groups are matched by their resource name (model, accelerator, parallelism: group_names), so a
group the new plan keeps is scaled, not replaced. The order never lets serving capacity drop
below what either plan needs: first new and grown groups (and changed engine settings, rolled
out surge-first at the larger of the two sizes), then a wait until they are ready, then the
gateway with the new plan (also when only routing or SLOs changed), and only then the groups that
shrink or go.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import yaml

from hetserve.deploy import Options, group_names, nodes_per_replica, pods_name
from hetserve.deploy.kubernetes import HEADLESS
from hetserve.plan.planfile import Plan, ReplicaGroup


@dataclass(frozen=True)
class Change:
    name: str
    kind: str  # create, grow, update, shrink, delete
    old: int  # replicas before (0: new)
    new: int  # replicas after (0: gone)
    workload: str  # deployment or leaderworkerset


def _by_name(plan: Plan) -> dict[str, tuple[ReplicaGroup, str]]:
    names = group_names(plan)
    return {names[g.id]: (g, "leaderworkerset" if nodes_per_replica(plan, g) > 1
                          else "deployment") for g in plan.groups}


def changes(old: Plan, new: Plan) -> list[Change]:
    """What differs between the plans, group by group (unchanged groups left out)."""
    before, after = _by_name(old), _by_name(new)
    out = []
    for name, (g, kind) in after.items():
        if name not in before:
            out.append(Change(name, "create", 0, g.replicas, kind))
            continue
        was = before[name][0]
        if (was.command, was.image) != (g.command, g.image):
            out.append(Change(name, "update", was.replicas, g.replicas, kind))
        elif g.replicas != was.replicas:
            out.append(Change(name, "grow" if g.replicas > was.replicas else "shrink",
                              was.replicas, g.replicas, kind))
    out += [Change(name, "delete", g.replicas, 0, kind)
            for name, (g, kind) in before.items() if name not in after]
    return out


def actions(old: Plan, new: Plan, opts: Options, folder: str) -> list[str]:
    """kubectl commands, in order, that take a cluster running `old` to `new`, whose manifests
    are in `folder` (written by `manifests`)."""
    before, gateway, after = phases(old, new, opts, folder)
    return before + gateway + after


def phases(old: Plan, new: Plan, opts: Options, folder: str
           ) -> tuple[list[str], list[str], list[str]]:
    """`actions` in its three parts: new capacity up (and ready), the gateway on the new plan,
    old capacity down."""
    ns = f"-n {shlex.quote(opts.namespace)}"
    first, wait, last = [], [], []
    applied = {c.name for c in changes(old, new) if c.kind in ("create", "update")}
    for name in group_names(new).values():  # every group's headless Service, which the
        if name not in applied:  # gateway resolves (a cluster deployed before they existed
            # has none): that object alone from the group's file, the workload untouched
            first.append(f"kubectl apply {ns} -f {shlex.quote(f'{folder}/{name}.yaml')} "
                         f"-l {HEADLESS}=true")
    for c in changes(old, new):
        ref = f"{c.workload}/{c.name}"
        if c.kind in ("create", "update"):
            first.append(f"kubectl apply {ns} -f {shlex.quote(f'{folder}/{c.name}.yaml')}")
        elif c.kind == "grow":
            first.append(f"kubectl scale {ns} {ref} --replicas={c.new}")
        if c.kind == "shrink" or (c.kind == "update" and c.new < c.old):
            last.append(f"kubectl scale {ns} {ref} --replicas={c.new}")
        elif c.kind == "delete":
            last.append(f"kubectl delete {ns} {ref} service/{c.name} "
                        f"service/{pods_name(c.name)} --ignore-not-found")
        if c.kind in ("create", "update", "grow"):
            wait.append(f"kubectl rollout status {ns} {ref} --timeout=30m"
                        if c.workload == "deployment" else
                        f"kubectl wait {ns} {ref} --for=jsonpath='{{.status.readyReplicas}}'="
                        f"{max(c.old, c.new)} --timeout=30m")
    if old.model_dump_json() == new.model_dump_json():
        return [], [], []
    # the gateway's template carries a digest of plan and backends: applying it rolls it
    gateway = [f"kubectl apply {ns} -f {shlex.quote(f'{folder}/gateway.yaml')}",
               f"kubectl rollout status {ns} deployment/hetserve-gateway --timeout=10m"]
    return first + wait, gateway, last


def manifests(old: Plan, new: Plan, opts: Options, where: str = "plan") -> dict[str, str]:
    """The new plan's files, except that a group whose engine changes while it shrinks rolls
    out at its old size first (it shrinks in the last step, after the gateway)."""
    from hetserve.deploy import render
    from hetserve.deploy.kubernetes import dump_yaml

    files = render(new, "kubernetes", opts, where)
    for c in changes(old, new):
        if c.kind == "update" and c.new < c.old:
            docs = list(yaml.safe_load_all(files[f"{c.name}.yaml"]))
            docs[0]["spec"]["replicas"] = c.old
            files[f"{c.name}.yaml"] = dump_yaml(docs)
    return files
