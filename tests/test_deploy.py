"""hetserve deploy: manifests for Kubernetes (schema-checked offline), SkyPilot and Ray Serve
configs, the dashboard's queries against the gateway's metrics, and plan-to-plan steps."""

from __future__ import annotations

import copy
import json
import os
import stat
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

import hetserve
from hetserve.catalog import load_catalog
from hetserve.deploy import Options, group_names, render
from hetserve.deploy.diff import actions, changes
from hetserve.errors import HetserveError
from hetserve.gateway.backends import Resolve, parse_backends
from hetserve.plan.planfile import Plan, parse_plan
from tests.test_cli import cli

DATA = Path(__file__).parent / "data"
K8S = "1.37.0"


@cache
def demo_plan() -> Plan:
    """The plan `make demo` deploys (its MILP; make demo adds --verify)."""
    return hetserve.make_plan("llama-3.1-70b", workload="azure-conv", rate=10, ttft=2,
                              tpot=0.05, baselines=False)


@cache
def small_plan(rate: float = 6.0) -> Plan:
    return hetserve.make_plan("llama-3.1-8b", workload="azure-conv", rate=rate, ttft=2,
                              tpot=0.05, baselines=False,
                              catalog=load_catalog().only(["L4", "A10G", "A100-80GB"]))


@cache
def multinode_plan() -> Plan:
    """70B on T4s only: TP8 x PP2, 16 devices per replica, two 8-GPU nodes each."""
    return hetserve.make_plan("llama-3.1-70b", workload="azure-conv", rate=0.2, ttft=10,
                              tpot=0.2, baselines=False, catalog=load_catalog().only(["T4"]))


def crd_validator(name: str) -> jsonschema.Draft7Validator:
    """A CRD's openAPIV3Schema as JSON Schema: nullable as a type, unknown fields refused
    (where the API server would prune them) unless the schema keeps them."""
    crd = json.loads((DATA / "crds" / f"{name}.json").read_text())
    schema = copy.deepcopy(crd["versions"]["v1"])

    def fix(node):
        if isinstance(node, dict):
            if node.get("nullable") and "type" in node:
                node["type"] = [node["type"], "null"]
            if "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                fix(value)
        elif isinstance(node, list):
            for value in node:
                fix(value)

    fix(schema)
    return jsonschema.Draft7Validator(schema)


CRDS = {"LeaderWorkerSet": "leaderworkerset", "ServiceMonitor": "servicemonitor"}


def validate(doc: dict) -> None:
    kind = doc["kind"]
    if kind in CRDS:
        errors = [f"{list(e.path)}: {e.message}" for e in crd_validator(CRDS[kind]).iter_errors(
            doc)]
        assert not errors, errors
    elif kind == "Kustomization":
        assert set(doc) == {"apiVersion", "kind", "namespace", "resources"}
    else:
        kubernetes_validate.validate(doc, K8S, strict=True)


def docs(files: dict[str, str]) -> list[dict]:
    return [d for name, text in files.items() if name.endswith(".yaml")
            for d in yaml.safe_load_all(text)]


def test_kubernetes_manifests_of_the_demo_plan_validate():
    plan = demo_plan()
    files = render(plan, "kubernetes", Options(cluster="gfd", namespace="serving"))
    names = group_names(plan)
    assert sorted(files) == sorted([f"{n}.yaml" for n in names.values()] + [
        "gateway.yaml", "monitor.yaml", "dashboard.json", "dashboard.yaml",
        "kustomization.yaml"])
    all_docs = docs(files)
    for doc in all_docs:
        validate(doc)
    kinds = [d["kind"] for d in all_docs]
    assert kinds.count("Deployment") == len(plan.groups) + 1  # engines and the gateway
    assert kinds.count("Service") == 2 * len(plan.groups) + 1  # and a headless one per group
    assert kinds.count("ServiceMonitor") == 1 and kinds.count("ConfigMap") == 2
    for g in plan.groups:
        engine, service, pods = yaml.safe_load_all(files[f"{names[g.id]}.yaml"])
        # the headless Service beside it: the same pods, one DNS address per ready one
        assert pods["metadata"]["name"] == f"{names[g.id]}-pods"
        assert pods["spec"] == {"clusterIP": "None", "selector": service["spec"]["selector"],
                                "ports": service["spec"]["ports"],
                                "publishNotReadyAddresses": False}
        assert "clusterIP" not in service["spec"]  # the group's Service stays as it was
        assert engine["spec"]["replicas"] == g.replicas
        pod = engine["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        resource = "amd.com/gpu" if g.accelerator == "MI300X" else "nvidia.com/gpu"
        assert container["resources"]["limits"] == {resource: g.devices_per_replica}
        assert container["command"] == g.command and container["image"] == g.image
        assert "--tensor-parallel-size" in g.command and "--dtype" in g.command
        assert g.command[g.command.index("--dtype") + 1] == "auto"  # float16 where no bf16
        assert container["resources"]["requests"]["memory"] == f"{8 * g.devices_per_replica}Gi"
        assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == 10
        assert all(container[p]["httpGet"]["path"] == "/health"
                   for p in ("startupProbe", "readinessProbe", "livenessProbe"))
        assert service["spec"]["selector"] == engine["spec"]["selector"]["matchLabels"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-B200"} \
            if g.accelerator == "B200" else {"amd.com/gpu.product-name":
                                             "AMD_Instinct_MI300X_OAM"}
    gateway = {d["kind"]: d for d in yaml.safe_load_all(files["gateway.yaml"])}
    config = gateway["ConfigMap"]["data"]
    again = parse_plan(json.loads(config["plan.json"]), "configmap")
    assert again == plan
    urls = parse_backends(yaml.safe_load(config["backends.yaml"]), again, "configmap")
    for g in plan.groups:  # per group its headless Service, resolved to one replica per pod
        (entry,) = urls[g.id]
        assert isinstance(entry, Resolve) and entry.url == \
            f"http://{names[g.id]}-pods.serving.svc.cluster.local:8000"
    assert set(gateway) == {"ConfigMap", "Deployment", "Service"}
    monitor = next(yaml.safe_load_all(files["monitor.yaml"]))["spec"]
    assert monitor["endpoints"][0]["path"] == "/metrics"
    # the monitor's selector matches every Service (gateway and engines) but the headless ones
    # (each pod is scraped once)
    (rule,) = monitor["selector"]["matchExpressions"]
    assert rule["operator"] == "DoesNotExist"
    for doc in all_docs:
        if doc["kind"] == "Service":
            labels = doc["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in monitor["selector"]["matchLabels"].items())
            assert (rule["key"] in labels) == (doc["spec"].get("clusterIP") == "None")


def test_a_broken_manifest_fails_validation():
    """The checks above can fail: a wrong field type, an unknown field, a CRD typo."""
    files = render(small_plan(), "kubernetes", Options())
    engine = next(yaml.safe_load_all(files[next(f for f in files if "a10g" in f or "l4" in f
                                                 or "a100" in f)]))
    bad = copy.deepcopy(engine)
    bad["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError, match="not of type"):
        validate(bad)
    bad = copy.deepcopy(engine)
    bad["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="'gpus' was unexpected"):
        validate(bad)
    monitor = next(yaml.safe_load_all(files["monitor.yaml"]))
    monitor["spec"]["endpoint"] = monitor["spec"].pop("endpoints")
    with pytest.raises(AssertionError, match="'endpoint' was unexpected"):
        validate(monitor)


def test_multinode_replicas_are_leaderworkersets():
    plan = multinode_plan()
    (g,) = plan.groups
    assert (g.tp, g.pp, g.devices_per_replica) == (8, 2, 16)
    files = render(plan, "kubernetes", Options(cluster="eks"))
    lws, service, pods = yaml.safe_load_all(files[f"{group_names(plan)[g.id]}.yaml"])
    validate(lws)
    validate(service)
    validate(pods)
    assert pods["spec"]["selector"]["role"] == "leader"  # the pods that serve
    assert lws["kind"] == "LeaderWorkerSet" and lws["spec"]["replicas"] == g.replicas
    assert lws["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] == {
        "maxSurge": 1, "maxUnavailable": 0}  # a new group before an old one goes
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2  # 16 T4s, 8 a node
    leader = template["leaderTemplate"]["spec"]
    assert leader["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 8}
    assert leader["nodeSelector"] == {"karpenter.k8s.aws/instance-gpu-name": "t4"}
    assert "--distributed-executor-backend ray" in leader["containers"][0]["command"][2]
    assert template["workerTemplate"]["spec"]["containers"][0]["command"][2].startswith(
        "until ray start --address=$(LWS_LEADER_ADDRESS):6379 --block; do sleep 5; done")
    assert service["spec"]["selector"]["role"] == "leader"
    with pytest.raises(HetserveError, match="spans nodes; --target ray renders single-node"):
        render(plan, "ray", Options())


@pytest.mark.parametrize("cluster, selector", [
    ("gke", {"cloud.google.com/gke-accelerator": "nvidia-a100-80gb"}),
    ("eks", {"karpenter.k8s.aws/instance-gpu-name": "a100",
             "karpenter.k8s.aws/instance-gpu-memory": "81920"}),
    ("aks", {"node.kubernetes.io/instance-type": "Standard_NC24ads_A100_v4"}),  # 1-GPU VMs
    ("gfd", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}),
])
def test_node_selectors_by_cluster(cluster, selector):
    plan = a100_plan()
    files = render(plan, "kubernetes", Options(cluster=cluster))
    for g in plan.groups:
        engine = next(yaml.safe_load_all(files[f"{group_names(plan)[g.id]}.yaml"]))
        validate(engine)
        assert engine["spec"]["template"]["spec"]["nodeSelector"] == selector


@cache
def a100_plan() -> Plan:
    return hetserve.make_plan("llama-3.1-8b", workload="azure-conv", rate=6, ttft=2, tpot=0.05,
                              baselines=False, catalog=load_catalog().only(["A100-80GB"]))


def test_clusters_without_the_type_are_refused_by_name():
    with pytest.raises(HetserveError, match=r"group g\d runs on (A40|MI300X), which has no name "
                       "for --cluster eks in the catalog's targets table"):
        render(demo_plan(), "kubernetes", Options(cluster="eks"))
    small = hetserve.make_plan("llama-3.1-8b", workload="azure-conv", rate=2, ttft=2,
                               tpot=0.05, baselines=False,
                               catalog=load_catalog().only(["L4", "A10G"]))
    with pytest.raises(HetserveError, match=r"runs on (L4|A10G), which has no name for "
                       "--cluster aks"):
        render(small, "kubernetes", Options(cluster="aks"))


def test_what_deploy_cannot_run_is_refused_by_name():
    data = multinode_plan().to_dict()
    g = data["groups"][0]
    g["engine"], g["engine_version"] = "sglang", "0.5.3"
    g["command"] = ["python3", "-m", "sglang.launch_server", "--tp-size", "8", "--pp-size", "2"]
    with pytest.raises(HetserveError, match="group g0: a sglang replica spanning 2 nodes; "
                       "deploy renders multi-node replicas for vLLM only"):
        render(parse_plan(data, "p"), "kubernetes", Options())
    int4 = hetserve.make_plan("llama-3.1-8b", workload="azure-conv", rate=2, dtype="int4",
                              baselines=False, catalog=load_catalog().only(["L4"]))
    assert "--quantization" in int4.groups[0].command
    with pytest.raises(HetserveError, match="serves int4 weights, which the engines load from "
                       "an AWQ checkpoint; the model's hf_id 'meta-llama/Llama-3.1-8B-Instruct'"):
        render(int4, "kubernetes", Options())


def test_dashboard_queries_name_metrics_the_gateway_exports():
    from prometheus_client import generate_latest

    from hetserve.deploy.dashboard import dashboard
    from hetserve.gateway import Gateway

    plan = small_plan()
    board = dashboard(plan)
    titles = [p["title"] for p in board["panels"]]
    assert len(titles) == 11 and "Cost per hour" in titles
    assert any("SLO attainment" in t for t in titles)
    gw = Gateway(plan, {g.id: ["http://127.0.0.1:9"] for g in plan.groups})
    gw.requests.labels(plan.models[0].name, "g0", "ok").inc()
    gw.refused.labels("429").inc()
    gw.retries.labels(plan.models[0].name).inc()
    gw.slo.labels(plan.models[0].name, "g0", "true").inc()
    for histogram in (gw.ttft, gw.tpot):
        histogram.labels(plan.models[0].name, "g0", "in1-256").observe(0.1)
    gw.latency.labels(plan.models[0].name, "g0").observe(0.1)
    gw._count_share(plan.models[0].name, "g0")
    gw.discovered.labels(plan.models[0].name, "g0").set(2)  # set by DNS discovery
    gw.healthy.labels(plan.models[0].name, "g0", "http://127.0.0.1:9").set(1)  # health checks
    exported = generate_latest(gw.registry).decode()
    import re
    wanted = {m for p in board["panels"] for t in p["targets"]
              for m in re.findall(r"hetserve:[a-z_]+", t["expr"])}
    assert len(wanted) >= 9
    for metric in wanted:
        assert re.search(rf"^{re.escape(metric)}[{{ ]", exported, re.M), metric
    cost = re.search(r'^hetserve:group_usd_per_hour\{.*group="g0".*\} (\S+)', exported, re.M)
    assert float(cost.group(1)) == pytest.approx(plan.groups[0].usd_per_hour)
    slo = board["panels"][2]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert slo[1]["value"] == plan.models[0].attainment


@pytest.mark.parametrize("make", [demo_plan, small_plan])
def test_skypilot_services_validate_against_skypilots_schemas(make):
    schemas = json.loads((DATA / "skypilot_schemas.json").read_text())
    plan = make()
    files = render(plan, "skypilot", Options())
    names = group_names(plan)
    for g in plan.groups:
        task = yaml.safe_load(files[f"{names[g.id]}.yaml"])
        jsonschema.Draft202012Validator(schemas["task"]).validate(task)
        jsonschema.Draft202012Validator(schemas["service"]).validate(task["service"])
        jsonschema.Draft202012Validator(schemas["resources"]).validate(task["resources"])
        acc = next(a for a in plan.accelerators if a.name == g.accelerator)
        assert task["resources"]["accelerators"] == {acc.names.skypilot: g.devices_per_replica}
        assert task["service"]["replica_policy"] == {"min_replicas": g.replicas,
                                                     "max_replicas": g.replicas}
        assert task["service"]["readiness_probe"]["path"] == "/health"
        assert task["run"] == " ".join(g.command)
        if acc.name == "MI300X":  # ROCm: the engine's image, not vLLM's CUDA wheel
            assert task["resources"]["image_id"] == f"docker:{g.image}" and "setup" not in task
        else:
            assert task["setup"] == "pip install vllm==0.11.0"
    bad = yaml.safe_load(files[f"{names['g0']}.yaml"])
    bad["resources"]["use_spot"] = "no"
    with pytest.raises(jsonschema.ValidationError, match="'no' is not of type 'boolean'"):
        jsonschema.Draft202012Validator(schemas["resources"]).validate(bad["resources"])
    bad["service"]["replica_policy"]["min_replica"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_replica"):
        jsonschema.Draft202012Validator(schemas["service"]).validate(bad["service"])
    up = files["up.sh"]
    assert up.count("sky serve up -y") == len(plan.groups) == up.count("--env HF_TOKEN")
    assert "http://$(" not in up  # sky prints the endpoint's scheme itself
    assert parse_plan(json.loads(files["plan.json"]), "plan.json") == plan


def test_skypilot_uses_the_imported_instance(tmp_path):
    from hetserve.catalog import Offer

    plan = small_plan()
    rows = []
    for acc in plan.accelerators:
        offer = Offer(cloud="aws", region="us-east-1", instance_type=f"{acc.name}.x",
                      gpus=1, usd_per_hour=acc.usd_per_hour)
        rows.append(acc.model_copy(update={"offers": (offer,)}).model_dump(mode="json"))
    data = plan.to_dict() | {"accelerators": rows}
    with_offers = parse_plan(data, "plan")
    files = render(with_offers, "skypilot", Options())
    task = yaml.safe_load(files[f"{group_names(plan)['g0']}.yaml"])
    acc = plan.groups[0].accelerator
    assert {k: task["resources"][k] for k in ("cloud", "region", "instance_type")} == {
        "cloud": "aws", "region": "us-east-1", "instance_type": f"{acc}.x"}
    from hetserve.deploy.skypilot import instance_notes

    assert instance_notes(with_offers) == []
    # only 4-device instances: every 1-device replica pays for 4, and deploy says so
    for row in rows:
        row["offers"][0] |= {"gpus": 4, "usd_per_hour": 4 * row["usd_per_hour"]}
    notes = instance_notes(parse_plan(data | {"accelerators": rows}, "plan"))
    g = plan.groups[0]
    price = next(a.usd_per_hour for a in plan.accelerators if a.name == g.accelerator)
    assert notes[0] == (f"group g0: 1 {g.accelerator} a replica, but the smallest aws instance "
                        f"with them ({g.accelerator}.x) has 4: each replica pays "
                        f"${4 * price:.2f}/h, the plan counted ${price:.2f}/h")
    assert len(notes) == len(plan.groups)


@pytest.mark.parametrize("make", [demo_plan, small_plan])
def test_ray_serve_config_validates(make):
    from ray.serve.schema import ServeDeploySchema

    plan = make()
    files = render(plan, "ray", Options())
    config = yaml.safe_load(files["serve.yaml"])
    ServeDeploySchema.model_validate(config)
    apps = {a["name"]: a for a in config["applications"]}
    names = group_names(plan)
    assert set(apps) == {*names.values(), "gateway"}
    for g in plan.groups:
        (dep,) = apps[names[g.id]]["deployments"]
        assert dep["num_replicas"] == g.replicas
        assert dep["ray_actor_options"]["num_gpus"] == g.devices_per_replica
        acc = next(a for a in plan.accelerators if a.name == g.accelerator)
        assert dep["ray_actor_options"]["accelerator_type"] == acc.names.ray
        assert apps[names[g.id]]["args"]["command"] == g.command
    assert apps["gateway"]["route_prefix"] == "/"


def test_a_changed_plan_yields_only_its_scale_actions_new_capacity_first():
    old = small_plan(6.0)
    data = old.to_dict()
    names = group_names(old)
    grow, keep = data["groups"][0], data["groups"][1] if len(data["groups"]) > 1 else None
    price = grow["usd_per_hour"] / grow["replicas"]
    grow["replicas"] += 2
    grow["usd_per_hour"] = price * grow["replicas"]
    data["usd_per_hour"] = sum(g["usd_per_hour"] for g in data["groups"])
    new = parse_plan(data, "new")
    assert [(c.name, c.kind, c.old, c.new) for c in changes(old, new)] == [
        (names["g0"], "grow", old.groups[0].replicas, old.groups[0].replicas + 2)]
    steps = actions(old, new, Options(namespace="ns"), "out")

    def headless(ns, folder):  # every group's headless Service alone (a cluster deployed
        return [f"kubectl apply -n {ns} -f {folder}/{n}.yaml -l hetserve.dev/headless=true"
                for n in names.values()]  # before they existed has none), workloads untouched

    assert steps == headless("ns", "out") + [
        f"kubectl scale -n ns deployment/{names['g0']} --replicas={old.groups[0].replicas + 2}",
        f"kubectl rollout status -n ns deployment/{names['g0']} --timeout=30m",
        "kubectl apply -n ns -f out/gateway.yaml",
        "kubectl rollout status -n ns deployment/hetserve-gateway --timeout=10m"]
    assert keep is None or [s for s in steps if names["g1"] in s] == [  # untouched: no action
        f"kubectl apply -n ns -f out/{names['g1']}.yaml -l hetserve.dev/headless=true"]
    # back again: the shrink comes after the gateway has the plan without that capacity
    back = actions(new, old, Options(namespace="ns"), "out")
    assert back[-1] == (f"kubectl scale -n ns deployment/{names['g0']} "
                        f"--replicas={old.groups[0].replicas}")
    assert back.index("kubectl apply -n ns -f out/gateway.yaml") < len(back) - 1
    assert actions(old, old, Options(), "out") == []
    # only the SLO changes: no group moves, but the gateway takes the new plan (its template
    # carries a digest of plan and backends, so applying it rolls it)
    data = old.to_dict()
    data["models"][0]["slo"]["ttft"] = 1.5
    slo = parse_plan(data, "slo")
    assert changes(old, slo) == []
    assert actions(old, slo, Options(), "d") == headless("default", "d") + [
        "kubectl apply -n default -f d/gateway.yaml",
        "kubectl rollout status -n default deployment/hetserve-gateway --timeout=10m"]
    digest = [next(d for d in yaml.safe_load_all(render(p, "kubernetes", Options())[
        "gateway.yaml"]) if d["kind"] == "Deployment")["spec"]["template"]["metadata"][
        "annotations"]["hetserve.dev/config-sha256"] for p in (old, slo)]
    assert digest[0] != digest[1]


def test_an_engine_change_that_shrinks_rolls_out_at_the_old_size_first():
    from hetserve.deploy.diff import manifests

    old_data = a100_plan().to_dict()
    g = old_data["groups"][0]
    price = g["usd_per_hour"] / g["replicas"]
    g["replicas"], g["usd_per_hour"] = 3, 3 * price
    old_data["usd_per_hour"] = sum(x["usd_per_hour"] for x in old_data["groups"])
    old = parse_plan(old_data, "old")
    new_data = json.loads(json.dumps(old_data))
    g = new_data["groups"][0]
    g["replicas"], g["usd_per_hour"] = 1, price
    new_data["usd_per_hour"] = sum(x["usd_per_hour"] for x in new_data["groups"])
    cmd = g["command"]
    cmd[cmd.index("--max-num-seqs") + 1] = "128"
    new = parse_plan(new_data, "new")
    name = group_names(new)["g0"]
    assert [(c.kind, c.old, c.new) for c in changes(old, new)] == [("update", 3, 1)]
    steps = actions(old, new, Options(), "d")
    full = steps.index(f"kubectl apply -n default -f d/{name}.yaml")  # the whole group first,
    assert all(s.endswith("-l hetserve.dev/headless=true") for s in steps[:full])  # but the
    assert full == len(new.groups) - 1  # other groups' headless Services
    assert steps[-1] == f"kubectl scale -n default deployment/{name} --replicas=1"
    assert steps.index("kubectl apply -n default -f d/gateway.yaml") < len(steps) - 1
    rolled = next(yaml.safe_load_all(manifests(old, new, Options())[f"{name}.yaml"]))
    assert rolled["spec"]["replicas"] == 3  # at the old size until the gateway moved
    assert "128" in rolled["spec"]["template"]["spec"]["containers"][0]["command"]


def test_replacing_a_type_creates_before_it_deletes():
    old, new = small_plan(6.0), hetserve.make_plan(
        "llama-3.1-8b", workload="azure-conv", rate=6.0, ttft=2, tpot=0.05, baselines=False,
        catalog=load_catalog().only(["H100-SXM"]))
    created = [c.name for c in changes(old, new) if c.kind == "create"]
    deleted = [c.name for c in changes(old, new) if c.kind == "delete"]
    assert created == list(group_names(new).values())
    assert deleted == list(group_names(old).values())
    steps = actions(old, new, Options(), "d")
    first_delete = min(i for i, s in enumerate(steps) if s.startswith("kubectl delete"))
    last_ready = max(i for i, s in enumerate(steps) if "rollout status" in s)
    assert last_ready < first_delete
    assert sum(s.startswith("kubectl delete") for s in steps) == len(deleted)
    assert all(f"service/{n} service/{n}-pods" in " ".join(steps) for n in deleted)


def test_deploy_cli(tmp_path):
    plan_file = tmp_path / "plan.json"
    small_plan().save(plan_file)
    for target, expected in (("kubernetes", "gateway.yaml"), ("skypilot", "up.sh"),
                             ("ray", "serve.yaml")):
        out = tmp_path / target
        rc, stdout, err = cli("deploy", str(plan_file), "--target", target, "--out", str(out))
        assert rc == 0, err
        assert (out / expected).exists() and f"files to {out}" in stdout
    # an old plan file names what it lacks
    data = json.loads(plan_file.read_text())
    data["version"] = 2
    for g in data["groups"]:
        del g["command"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    rc, _, err = cli("deploy", str(old), "--out", str(tmp_path / "x"))
    assert rc == 2 and "cannot deploy (plan file version 2): missing groups[0].command" in err
    rc, _, err = cli("deploy", str(plan_file), "--target", "nomad", "--out", str(tmp_path))
    assert rc == 2 and "--target 'nomad': expected one of kubernetes, skypilot, ray" in err
    rc, _, err = cli("deploy", str(plan_file), "--cluster", "oke", "--out", str(tmp_path))
    assert rc == 2 and "--cluster 'oke'" in err
    rc, _, err = cli("deploy", str(plan_file), "--namespace", "Bad NS", "--out", str(tmp_path))
    assert rc == 2 and "--namespace 'Bad NS': expected a DNS label" in err
    cpu = tmp_path / "cpu.json"
    hetserve.make_plan("llama-3.1-8b", workload="azure-conv", rate=0.2, ttft=10, tpot=0.5,
                       baselines=False, catalog=load_catalog().only(["c7i.24xlarge"])).save(cpu)
    rc, _, err = cli("deploy", str(cpu), "--out", str(tmp_path / "cpu"))
    assert rc == 2 and "group g0 runs on c7i.24xlarge (a CPU instance)" in err


def test_deploy_diff_cli_dry_run_and_apply(tmp_path, monkeypatch):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    small_plan(6.0).save(old)
    small_plan(12.0).save(new)
    expected = actions(small_plan(6.0), small_plan(12.0), Options(), str(tmp_path / "d"))
    assert expected, "the two rates should deploy differently"
    rc, stdout, err = cli("deploy", "--from", str(old), "--to", str(new), "--out",
                          str(tmp_path / "d"))
    assert rc == 0, err
    printed = [line for line in stdout.splitlines() if line.startswith("kubectl")]
    assert printed == expected and "dry run: nothing was changed" in stdout
    assert (tmp_path / "d" / "gateway.yaml").exists()
    # --apply runs them in order (a kubectl that records its arguments)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "kubectl.log"
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f"#!/bin/sh\necho \"kubectl $*\" >> {log}\n")
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    rc, _, err = cli("deploy", "--from", str(old), "--to", str(new), "--out",
                     str(tmp_path / "d"), "--apply")
    assert rc == 0, err
    assert log.read_text().splitlines() == expected
    kubectl.write_text("#!/bin/sh\nexit 1\n")
    rc, _, err = cli("deploy", "--from", str(old), "--to", str(new), "--out",
                     str(tmp_path / "d"), "--apply")
    assert rc == 2 and f"--apply: '{expected[0]}' failed with exit code 1" in err


def test_headless_service_names_stay_dns_labels():
    from hetserve.deploy import pods_name

    assert pods_name("llama-3-1-8b-l4-tp1") == "llama-3-1-8b-l4-tp1-pods"
    long = ["m" * 60 + "-a", "m" * 60 + "-b", "m" * 63]
    got = [pods_name(n) for n in long]
    assert all(len(n) <= 63 and n.endswith("-pods") for n in got) and len(set(got)) == 3
