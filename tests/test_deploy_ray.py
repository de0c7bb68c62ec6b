"""hetserve deploy --target ray on a real local Ray: the generated Serve config deployed as it
is (accelerators faked as Ray resources, engines replaced by emulators), and requests sent through
the gateway application to the groups' applications."""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import openai
import pytest
import yaml

import hetserve
from hetserve.catalog import load_catalog
from hetserve.deploy import Options, group_names, render

DEPLOY_SECONDS = 180
REQUESTS = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_local(monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray = pytest.importorskip("ray")
    from ray import serve

    started = []

    def start(resources: dict[str, float]):
        ray.init(num_cpus=8, num_gpus=8, resources=resources, include_dashboard=False,
                 namespace="hetserve-test", log_to_driver=False)
        started.append(True)
        return serve

    yield start
    if started:
        serve.shutdown()
        ray.shutdown()


def test_ray_serve_deploys_the_generated_config_and_serves_through_the_gateway(ray_local):
    from ray.serve._private import api  # what `serve run config.yaml` calls, in process
    from ray.serve.schema import ServeDeploySchema

    plan = hetserve.make_plan("llama-3.1-8b", workload="azure-conv", rate=6, ttft=2,
                              tpot=0.05, baselines=False,
                              catalog=load_catalog().only(["L4", "A10G", "A100-80GB"]))
    port = _free_port()
    files = render(plan, "ray", Options(emulate=True, extra={"http_port": port}))
    config = yaml.safe_load(files["serve.yaml"])
    config["http_options"]["host"] = "127.0.0.1"
    schema = ServeDeploySchema.model_validate(config)
    serve = ray_local({f"accelerator_type:{a.names.ray}": 8.0 for a in plan.accelerators})
    client = api.serve_start(http_options=schema.http_options.model_dump(),
                             proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)
    apps = [a["name"] for a in config["applications"]]
    deadline = time.monotonic() + DEPLOY_SECONDS
    while True:
        status = serve.status().applications
        if all(name in status and status[name].status == "RUNNING" for name in apps):
            break
        failed = [f"{n}: {status[n].message}" for n in apps
                  if n in status and status[n].status in ("DEPLOY_FAILED", "UNHEALTHY")]
        assert not failed, failed
        assert time.monotonic() < deadline, {n: status[n].status for n in status}
        time.sleep(1)
    # every group's replicas run where the config put them
    names = group_names(plan)
    for g in plan.groups:
        deployment = status[names[g.id]].deployments["Process"]
        assert deployment.replica_states.get("RUNNING") == g.replicas

    base = f"http://127.0.0.1:{port}"
    oai = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)
    for k in range(REQUESTS):
        out = oai.completions.create(model="llama-3.1-8b", prompt="word " * (20 + 40 * k),
                                     max_tokens=8)
        assert out.usage.completion_tokens == 8 and out.choices[0].text
    chunks = list(oai.chat.completions.create(
        model="llama-3.1-8b", messages=[{"role": "user", "content": "hello there"}],
        max_tokens=6, stream=True))
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) == 6
    # a group's route answers on its own too (the gateway's backends)
    with urllib.request.urlopen(f"{base}/{names[plan.groups[0].id]}/health", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    served = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^hetserve:requests_total\{group="([^"]+)",model="[^"]+",outcome="ok"\} (\S+)',
        metrics, re.M)}
    assert sum(served.values()) == REQUESTS + 1 and set(served) <= {g.id for g in plan.groups}
