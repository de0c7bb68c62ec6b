"""The backends file: which endpoints serve each replica group of a plan.

    # group id -> one base URL per replica (the engine's OpenAI server, without /v1)
    g0: [http://10.0.0.1:8000, http://10.0.0.2:8000]
    g1: [http://10.0.0.3:8000]

Every group of the plan is listed with at least one URL; a URL serves one replica. Fewer URLs
than the plan's replicas is allowed (a group still starting) and counted as that many replicas.
An address that balances over several replicas (a Kubernetes Service, a Ray Serve route) is
given with their count, and counts as that many:

    g0: [{url: http://llama-3-1-8b-l4-tp1.serving.svc:8000, replicas: 3}]
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import yaml

from hetserve.errors import HetserveError, read_text
from hetserve.plan.planfile import Plan


def parse_backends(data, plan: Plan, where: str) -> dict[str, list[str]]:
    """Group id -> URLs, checked against the plan; errors name `where` and the key."""
    if not isinstance(data, dict):
        raise HetserveError(f"{where}: expected a mapping of replica group id -> list of URLs")
    ids = [g.id for g in plan.groups]
    out: dict[str, list[str]] = {}
    for key, urls in data.items():
        if key not in ids:
            raise HetserveError(f"{where}: group {key!r} is not in the plan (its groups: "
                                f"{', '.join(ids)})")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not urls:
            raise HetserveError(f"{where}: group {key}: expected a non-empty list of URLs")
        out[key] = [u for item in urls for u in _expand(item, f"{where}: group {key}")]
    missing = [g for g in ids if g not in out]
    if missing:
        raise HetserveError(f"{where}: no URLs for group(s) {', '.join(missing)} of the plan")
    return out


def _expand(item, where: str) -> list[str]:
    """One URL per replica: a URL, or {url, replicas} for a balanced address."""
    count = 1
    if isinstance(item, dict):
        if set(item) != {"url", "replicas"}:
            raise HetserveError(f"{where}: expected a URL or {{url: URL, replicas: N}}, got keys "
                                f"{', '.join(map(str, item))}")
        item, count = item["url"], item["replicas"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise HetserveError(f"{where}: {item}: replicas: expected an integer >= 1, got "
                                f"{count!r}")
    parsed = urlparse(item) if isinstance(item, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise HetserveError(f"{where}: {item!r} is not an http(s) URL")
    return [item.rstrip("/")] * count


def load_backends(path: Path | str, plan: Plan) -> dict[str, list[str]]:
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f": line {mark.line + 1}" if mark is not None else ""
        raise HetserveError(f"{path}{line}: not valid YAML") from None
    return parse_backends(data, plan, str(path))
