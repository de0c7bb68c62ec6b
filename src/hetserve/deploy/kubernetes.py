"""A plan as Kubernetes manifests: per replica group a vLLM Deployment (a LeaderWorkerSet where a
replica spans nodes), its Service, and a headless Service (`NAME-pods`) that lists its ready
pods, which the gateway resolves to one replica per pod; the gateway with the plan in a
ConfigMap and its Service; a ServiceMonitor; a Grafana dashboard; a kustomization listing them
(`kubectl apply -k DIR`)."""

from __future__ import annotations

import hashlib
import json
import shlex

import yaml

from hetserve.deploy import (
    GATEWAY_PORT,
    Options,
    command,
    group_names,
    image,
    nodes_per_replica,
    pods_name,
)
from hetserve.deploy.dashboard import dashboard
from hetserve.errors import HetserveError
from hetserve.plan.planfile import Plan, ReplicaGroup
from hetserve.plan.serving import PORT

PART_OF = {"app.kubernetes.io/part-of": "hetserve"}
# on the headless Services: the ServiceMonitor leaves them out (their pods are scraped once,
# through the group's Service)
HEADLESS = "hetserve.dev/headless"
STARTUP_SECONDS = 1800  # a replica may take this long to download and load its weights
SHM = "16Gi"  # /dev/shm for the engine's tensor-parallel workers
PROBE_TIMEOUT = 5
PRE_STOP_SECONDS = 10  # a stopping pod leaves the Service's endpoints first
DRAIN_SECONDS = 300  # then requests in flight have this long to finish
CPU_PER_DEVICE = 2
MEMORY_GIB_PER_DEVICE = 8


def render_kubernetes(plan: Plan, opts: Options) -> dict[str, str]:
    names = group_names(plan)
    files: dict[str, str] = {}
    for g in plan.groups:
        files[f"{names[g.id]}.yaml"] = dump_yaml(_group(plan, g, names[g.id], opts))
    files["gateway.yaml"] = dump_yaml(gateway(plan, names, opts))
    files["monitor.yaml"] = dump_yaml([monitor(opts)])
    board = dashboard(plan)
    files["dashboard.json"] = json.dumps(board, indent=2) + "\n"
    files["dashboard.yaml"] = dump_yaml([{
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": _meta("hetserve-dashboard", opts, {"grafana_dashboard": "1"}),
        "data": {"hetserve.json": json.dumps(board)}}])
    files["kustomization.yaml"] = dump_yaml([{
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": opts.namespace,
        "resources": sorted(f for f in files if f.endswith(".yaml"))}])
    return files


def backends(plan: Plan, names: dict[str, str], namespace: str) -> dict:
    """The gateway's backends file: each group's headless Service, which the gateway resolves
    to one replica per ready pod (again every few seconds)."""
    return {g.id: [{"url": f"http://{pods_name(names[g.id])}.{namespace}.svc.cluster.local:"
                           f"{PORT}", "resolve": True}] for g in plan.groups}


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:  # a manifest spells every value out
        return True


def dump_yaml(docs: list[dict]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=100)


def _meta(name: str, opts: Options, labels: dict | None = None) -> dict:
    return {"name": name, "namespace": opts.namespace,
            "labels": {"app.kubernetes.io/name": name, **PART_OF, **(labels or {})}}


def node_selector(plan: Plan, group: ReplicaGroup, cluster: str, per_pod: int) -> dict:
    """The labels that put a pod of `group` on a node with its accelerator, as `cluster` names
    them (the catalog's targets table)."""
    acc = plan.accelerator(group)
    names = acc.names
    missing = HetserveError(f"group {group.id} runs on {acc.name}, which has no name for "
                            f"--cluster {cluster} in the catalog's targets table (not offered "
                            "there?): choose another --cluster, or plan without it (--only)")
    if cluster == "gke":
        if not names.gke:
            raise missing
        return {"cloud.google.com/gke-accelerator": names.gke}
    if cluster == "eks":
        if not names.eks:
            raise missing
        out = {"karpenter.k8s.aws/instance-gpu-name": names.eks}
        if names.eks_memory_mib:
            out["karpenter.k8s.aws/instance-gpu-memory"] = str(names.eks_memory_mib)
        return out
    if cluster == "aks":
        sizes = sorted(n for n in names.aks if n >= per_pod)
        if not sizes:
            raise missing
        return {"node.kubernetes.io/instance-type": names.aks[sizes[0]]}
    if cluster == "gfd":
        if not names.gfd:
            raise missing
        amd = names.device_resource == "amd.com/gpu"  # AMD's node labeller
        return {"amd.com/gpu.product-name" if amd else "nvidia.com/gpu.product": names.gfd}
    raise HetserveError(f"--cluster {cluster!r}: expected gke, eks, aks or gfd")


def _probe(path: str, period: int, failures: int) -> dict:
    # a saturated engine can take seconds to answer /health: not a reason to restart it
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
            "timeoutSeconds": PROBE_TIMEOUT, "failureThreshold": failures}


def _weights_gib(plan: Plan, g: ReplicaGroup) -> int:
    """The model's weights in GiB, rounded up: what a pod downloads to its cache."""
    dep = plan.deployment(g)
    return -(-int(dep.model.weight_bytes(dep.weight_dtype)) // 2**30)


def _engine_pod(plan: Plan, g: ReplicaGroup, labels: dict, opts: Options, per_pod: int,
                argv: list[str], probes: bool = True) -> dict:
    acc = plan.accelerator(g)
    container = {
        "name": "engine", "image": image(g, opts), "command": argv,
        "ports": [{"name": "http", "containerPort": PORT}],
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "hf-token", "key": "token", "optional": True}}}],
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"},
                         {"name": "cache", "mountPath": "/root/.cache"}],
    }
    cache = f"{int(_weights_gib(plan, g) * 1.25) + 10}Gi"  # the weights, and room to spare
    pod: dict = {"volumes": [{"name": "shm", "emptyDir": {"medium": "Memory",
                                                          "sizeLimit": SHM}},
                             {"name": "cache", "emptyDir": {"sizeLimit": cache}}]}
    # host CPU for tokenising and scheduling, host memory for loading (not BestEffort pods)
    requests = {"cpu": str(CPU_PER_DEVICE * per_pod),
                "memory": f"{MEMORY_GIB_PER_DEVICE * per_pod}Gi"}
    if not opts.emulate:
        resource = acc.names.device_resource
        container["resources"] = {"limits": {resource: per_pod},
                                  "requests": {resource: per_pod, **requests}}
        pod["nodeSelector"] = node_selector(plan, g, opts.cluster, per_pod)
        pod["tolerations"] = [{"key": resource, "operator": "Exists", "effect": "NoSchedule"}]
        if opts.cluster == "aks":  # the taint Azure's docs put on GPU node pools
            pod["tolerations"].append({"key": "sku", "operator": "Equal", "value": "gpu",
                                       "effect": "NoSchedule"})
    else:
        container["resources"] = {"requests": {"cpu": "250m", "memory": "512Mi"}}
    if probes:
        container["startupProbe"] = _probe("/health", 10, STARTUP_SECONDS // 10)
        container["readinessProbe"] = _probe("/health", 5, 3)
        container["livenessProbe"] = _probe("/health", 10, 6)
    # leave the Service's endpoints before the engine stops, then let streams finish
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}}
    pod["containers"] = [container]
    pod["terminationGracePeriodSeconds"] = DRAIN_SECONDS
    return {"metadata": {"labels": labels}, "spec": pod}


def _group(plan: Plan, g: ReplicaGroup, name: str, opts: Options) -> list[dict]:
    nodes = nodes_per_replica(plan, g)
    labels = {"app.kubernetes.io/name": name, **PART_OF,
              "app.kubernetes.io/component": "engine",
              "hetserve.dev/model": _label_value(g.model),
              "hetserve.dev/accelerator": _label_value(g.accelerator)}
    meta = {"name": name, "namespace": opts.namespace, "labels": labels,
            "annotations": {"hetserve.dev/group": g.id,  # of this plan (ids are positional)
                            "hetserve.dev/planned-usd-per-hour": f"{g.usd_per_hour:.4f}",
                            "hetserve.dev/planned-share": f"{plan.planned_share(g):.4f}"}}
    argv = command(plan, g, opts)
    if nodes == 1 or opts.emulate:
        workload = {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": g.replicas,
                     "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                     # new replicas serve before old ones go (make before break)
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                     "template": _engine_pod(plan, g, labels, opts, g.devices_per_replica,
                                             argv)}}
        selector = {"app.kubernetes.io/name": name}
    else:
        per_pod = g.devices_per_replica // nodes
        leader = ["sh", "-c", "ray start --head --port=6379 && exec " + shlex.join(
            [*argv, "--distributed-executor-backend", "ray"])]
        # the leader may not resolve or listen yet: keep trying (a worker that exits would
        # recreate the whole group, leader included)
        worker = ["sh", "-c", "until ray start --address=$(LWS_LEADER_ADDRESS):6379 --block; "
                  "do sleep 5; done"]
        workload = {
            "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
            "metadata": meta,
            "spec": {"replicas": g.replicas,
                     # a new group serves before an old one goes (LWS defaults to the reverse)
                     "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration": {
                         "maxSurge": 1, "maxUnavailable": 0}},
                     "leaderWorkerTemplate": {
                "size": nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": _engine_pod(plan, g, {**labels, "role": "leader"}, opts,
                                              per_pod, leader),
                "workerTemplate": _engine_pod(plan, g, {**labels, "role": "worker"}, opts,
                                              per_pod, worker, probes=False)}}}
        selector = {"app.kubernetes.io/name": name, "role": "leader"}
    ports = [{"name": "http", "port": PORT, "targetPort": "http"}]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": name, "namespace": opts.namespace, "labels": labels},
        "spec": {"selector": selector, "ports": ports}}
    # the same pods, one DNS address each: only ready ones, so a draining pod leaves the name
    # (the gateway routes per pod over these; others may use the Service above)
    pods = {"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": pods_name(name), "namespace": opts.namespace,
        "labels": {**labels, HEADLESS: "true"}},
        "spec": {"clusterIP": "None", "selector": selector, "ports": ports,
                 "publishNotReadyAddresses": False}}
    return [workload, service, pods]


def _label_value(text: str) -> str:
    """A label value: at most 63 of [A-Za-z0-9-_.], starting and ending alphanumeric."""
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:63]
    return out.strip("-_.") or "x"


def gateway(plan: Plan, names: dict[str, str], opts: Options) -> list[dict]:
    """The gateway: ConfigMap (plan, backends), Deployment and Service."""
    labels = {"app.kubernetes.io/name": "hetserve-gateway", **PART_OF,
              "app.kubernetes.io/component": "gateway"}
    meta = {"name": "hetserve-gateway", "namespace": opts.namespace, "labels": labels}
    data = {"plan.json": plan.model_dump_json(indent=1),
            "backends.yaml": yaml.safe_dump(backends(plan, names, opts.namespace),
                                            sort_keys=False)}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}
    container = {
        "name": "gateway", "image": opts.gateway_image,
        "command": ["hetserve", "serve", "/etc/hetserve/plan.json", "--backends",
                    "/etc/hetserve/backends.yaml", "--host", "0.0.0.0",
                    "--port", str(GATEWAY_PORT)],
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT}],
        "volumeMounts": [{"name": "config", "mountPath": "/etc/hetserve", "readOnly": True}],
        "readinessProbe": _probe("/health", 5, 3), "livenessProbe": _probe("/health", 10, 6),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "resources": {"requests": {"cpu": "1", "memory": "512Mi"},
                      "limits": {"memory": "2Gi"}}}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {"replicas": 1,
                 "selector": {"matchLabels": {"app.kubernetes.io/name": "hetserve-gateway"}},
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                 "template": {
                     # any change of plan or backends changes the template: the gateway rolls
                     "metadata": {"labels": labels, "annotations": {
                         "hetserve.dev/config-sha256": digest}},
                     "spec": {"containers": [container],
                              "terminationGracePeriodSeconds": DRAIN_SECONDS,
                              "volumes": [{"name": "config",
                                           "configMap": {"name": "hetserve-gateway"}}]}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
        "selector": {"app.kubernetes.io/name": "hetserve-gateway"},
        "ports": [{"name": "http", "port": GATEWAY_PORT, "targetPort": "http"}]}}
    return [config, deployment, service]


def monitor(opts: Options) -> dict:
    """A ServiceMonitor (Prometheus Operator) over the gateway and every engine Service (not
    the headless ones, which list the same pods): all serve /metrics on port http. In a file of
    its own: it needs the operator's CRD."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": _meta("hetserve", opts), "spec": {
                "selector": {"matchLabels": PART_OF, "matchExpressions": [
                    {"key": HEADLESS, "operator": "DoesNotExist"}]},
                "namespaceSelector": {"matchNames": [opts.namespace]},
                "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}]}}
