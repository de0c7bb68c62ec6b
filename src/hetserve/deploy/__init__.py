"""Deploy a plan: render it for Kubernetes, SkyPilot or Ray Serve, and the changes between plans.

Rendering is a pure function from a plan file (and a few options) to files: one engine service
per replica group, running the group's `command` (hetserve.plan.serving) on the accelerator the
plan chose, under the name the target gives that accelerator (the catalog's targets table), and
hetserve's gateway in front with the plan and the groups' addresses. Nothing here talks to a
cluster; `diff` lists the commands that move a cluster from one plan to the next.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from hetserve import __version__
from hetserve.errors import HetserveError, image_reference
from hetserve.plan.planfile import Plan, ReplicaGroup
from hetserve.plan.serving import PORT

__all__ = ["Options", "TARGETS", "check_deployable", "group_names", "nodes_per_replica",
           "pods_name", "render"]

TARGETS = ("kubernetes", "skypilot", "ray")
CLUSTERS = ("gke", "eks", "aks", "gfd")
GATEWAY_PORT = 8080
# hetserve's own image (gateway; emulators with --emulate): the Dockerfile at the repository's
# root builds it under this name; push it where the cluster pulls from and pass --gateway-image
GATEWAY_IMAGE = f"hetserve:{__version__}"


@dataclass(frozen=True)
class Options:
    """What a target needs besides the plan."""

    cluster: str = "gfd"  # kubernetes: how nodes name their GPUs (CLUSTERS)
    namespace: str = "default"
    image: str | None = None  # every engine's image instead of the plan's
    gateway_image: str = GATEWAY_IMAGE
    emulate: bool = False  # engines replaced by `hetserve emulate` of the same deployment
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image is not None:
            image_reference(self.image, "--image")
        image_reference(self.gateway_image, "--gateway-image")


def dns_label(text: str) -> str:
    """`text` as a DNS-1123 label (lower case, digits and '-', at most 63 characters)."""
    label = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return label[:63].rstrip("-") or "x"


def group_names(plan: Plan) -> dict[str, str]:
    """Group id -> the name of its resources on every target: the model, accelerator and
    parallelism, so that the same deployment keeps its name from one plan to the next (and a
    diff scales it rather than replacing it)."""
    names: dict[str, str] = {}
    for g in plan.groups:
        base = dns_label(f"{g.model}-{g.accelerator}-tp{g.tp}" + (f"-pp{g.pp}" if g.pp > 1
                                                                   else ""))
        name, k = base, 2
        while name in names.values():
            name = f"{base[:60]}-{k}"
            k += 1
        names[g.id] = name
    return names


def pods_name(name: str) -> str:
    """The name of the headless Service that lists a group's ready pods (the gateway resolves
    it to one replica per pod): `NAME-pods`, within a DNS label's 63 characters."""
    if len(name) <= 58:
        return f"{name}-pods"
    digest = hashlib.sha256(name.encode()).hexdigest()[:5]  # distinct for distinct names
    return f"{name[:52].rstrip('-')}-{digest}-pods"


def nodes_per_replica(plan: Plan, group: ReplicaGroup) -> int:
    """Nodes one replica spans: its devices over the most one node of its type holds."""
    per_node = plan.accelerator(group).max_per_node
    return -(-group.devices_per_replica // per_node)


def check_deployable(plan: Plan, where: str) -> None:
    """Refuse a plan that lacks what deploying needs, naming each missing field."""
    gaps = plan.deploy_gaps()
    if gaps:
        old = f" (plan file version {plan.version})" if plan.version < 3 else ""
        raise HetserveError(f"{where}: cannot deploy{old}: missing {', '.join(gaps)}; re-run "
                            "hetserve plan to write them")
    for g in plan.groups:
        if plan.accelerator(g).kind != "gpu":
            raise HetserveError(f"{where}: group {g.id} runs on {g.accelerator} (a CPU "
                                "instance); deploy renders GPU engines only: plan without it "
                                "(--only)")
        if nodes_per_replica(plan, g) > 1 and g.engine not in ("vllm", "vllm-v0"):
            raise HetserveError(f"{where}: group {g.id}: a {g.engine} replica spanning "
                                f"{nodes_per_replica(plan, g)} nodes; deploy renders multi-node "
                                "replicas for vLLM only (over Ray)")
        hf_id = plan.model_entry(g.model).spec.hf_id
        if g.dtype == "int4" and "awq" not in hf_id.lower():
            raise HetserveError(f"{where}: group {g.id} serves int4 weights, which the engines "
                                f"load from an AWQ checkpoint; the model's hf_id {hf_id!r} is "
                                "not one: give the model with the hf_id of its AWQ checkpoint "
                                "(--model config.json)")


def command(plan: Plan, group: ReplicaGroup, opts: Options, port: int = PORT) -> list[str]:
    """The argv a replica of `group` starts with: the plan's engine command, or with
    opts.emulate the emulator of the same deployment (no GPU needed)."""
    if not opts.emulate:
        argv = list(group.command or [])
        if "--port" in argv:
            argv[argv.index("--port") + 1] = str(port)
        return argv
    return ["hetserve", "emulate", "--model", group.model, "--accelerator", group.accelerator,
            "--tp", str(group.tp), "--pp", str(group.pp), "--engine", group.engine,
            "--dtype", group.dtype, "--max-num-seqs", str(group.max_num_seqs),
            "--max-num-batched-tokens", str(group.max_num_batched_tokens),
            "--host", "0.0.0.0", "--port", str(port)]


def image(group: ReplicaGroup, opts: Options) -> str:
    if opts.emulate:
        return opts.gateway_image
    return opts.image or group.image or ""


def render(plan: Plan, target: str, opts: Options, where: str = "plan") -> dict[str, str]:
    """Relative path -> text of every file `target` needs for `plan`."""
    check_deployable(plan, where)
    if target == "kubernetes":
        from hetserve.deploy.kubernetes import render_kubernetes
        return render_kubernetes(plan, opts)
    if target == "skypilot":
        from hetserve.deploy.skypilot import render_skypilot
        return render_skypilot(plan, opts)
    if target == "ray":
        from hetserve.deploy.rayserve import render_ray
        return render_ray(plan, opts)
    raise HetserveError(f"--target {target!r}: expected one of {', '.join(TARGETS)}")
