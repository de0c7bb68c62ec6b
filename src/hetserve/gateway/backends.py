"""The backends file: which endpoints serve each replica group of a plan.

    # group id -> one base URL per replica (the engine's OpenAI server, without /v1)
    g0: [http://10.0.0.1:8000, http://10.0.0.2:8000]
    g1: [http://10.0.0.3:8000]

Every group of the plan is listed with at least one URL; a URL serves one replica. Fewer URLs
than the plan's replicas is allowed (a group still starting) and counted as that many replicas.
An address that balances over several replicas (a Kubernetes Service, a Ray Serve route) is
given with their count, and counts as that many:

    g0: [{url: http://llama-3-1-8b-l4-tp1.serving.svc:8000, replicas: 3}]

A name that resolves to one address per replica (a Kubernetes headless Service, which lists its
ready pods) is given with `resolve: true`: every address it resolves to (A and AAAA records,
deduplicated) is one replica, at http://ADDRESS:PORT, and the gateway resolves it again every
few seconds (Envoy's STRICT_DNS, nginx's `resolve`):

    g0: [{url: http://llama-3-1-8b-l4-tp1-pods.serving.svc.cluster.local:8000, resolve: true}]

`parse_backends` keeps such entries as `Resolve`; `expand` turns the file and what its names
resolved to into group id -> URLs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

from hetserve.errors import HetserveError, read_text
from hetserve.plan.planfile import Plan

Address = tuple[str, int]  # (IP address, port) of one replica


@dataclass(frozen=True)
class Resolve:
    """`{url: URL, resolve: true}`: one replica per address the URL's host resolves to."""

    url: str  # as given, without a trailing /
    scheme: str
    host: str
    port: int
    path: str  # after the port ('' or '/prefix')

    def urls(self, addresses: Sequence[Address]) -> list[str]:
        """One URL per address (IPv6 in brackets); none resolved: the URL itself, one replica
        (requests to it fail as unreachable until its name resolves)."""
        if not addresses:
            return [self.url]
        return [f"{self.scheme}://{_host(a)}:{p}{self.path}" for a, p in addresses]

    def to_json(self) -> dict:
        return {"url": self.url, "resolve": True}


Backends = dict[str, list[str | Resolve]]  # group id -> URLs and names to resolve


def parse_backends(data, plan: Plan, where: str) -> Backends:
    """Group id -> URLs (one per replica) and `Resolve` entries, checked against the plan;
    errors name `where` and the key. Without `resolve` entries: group id -> URLs."""
    if not isinstance(data, dict):
        raise HetserveError(f"{where}: expected a mapping of replica group id -> list of URLs")
    ids = [g.id for g in plan.groups]
    out: Backends = {}
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


ENTRY = "a URL, {url: URL, replicas: N} or {url: URL, resolve: true}"


def _expand(item, where: str) -> list[str | Resolve]:
    """One URL per replica: a URL, {url, replicas} for a balanced address, or {url, resolve}
    for a name with one address per replica."""
    count, resolve = 1, False
    if isinstance(item, dict):
        keys = set(item)
        if keys == {"url", "replicas", "resolve"}:
            raise HetserveError(f"{where}: {item['url']}: replicas and resolve exclude each "
                                "other (a resolved name counts one replica per address)")
        if keys not in ({"url", "replicas"}, {"url", "resolve"}):
            raise HetserveError(f"{where}: expected {ENTRY}, got keys "
                                f"{', '.join(map(str, item))}")
        url = item["url"]
        if "replicas" in item:
            count = item["replicas"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise HetserveError(f"{where}: {url}: replicas: expected an integer >= 1, got "
                                    f"{count!r}")
        else:
            resolve = item["resolve"]
            if not isinstance(resolve, bool):
                raise HetserveError(f"{where}: {url}: resolve: expected true or false, got "
                                    f"{resolve!r}")
        item = url
    parsed = urlparse(item) if isinstance(item, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise HetserveError(f"{where}: {item!r} is not an http(s) URL")
    if not resolve:
        return [item.rstrip("/")] * count
    if parsed.scheme == "https":  # a certificate names the host, not each pod's address
        raise HetserveError(f"{where}: {item}: resolve: expected an http URL (the replicas are "
                            "reached by address, which a TLS certificate for the name does "
                            "not cover)")
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise HetserveError(f"{where}: {item}: not a valid port") from None
    if not parsed.hostname or "@" in parsed.netloc or parsed.query or parsed.fragment:
        raise HetserveError(f"{where}: {item}: resolve: expected http://HOST[:PORT][/PATH]")
    return [Resolve(item.rstrip("/"), parsed.scheme, parsed.hostname, port,
                    parsed.path.rstrip("/"))]


def names(spec: Backends) -> list[Resolve]:
    """The spec's entries to resolve, each once, in order."""
    return list(dict.fromkeys(e for entries in spec.values() for e in entries
                              if isinstance(e, Resolve)))


def expand(spec: Backends, resolved: Mapping[str, Sequence[Address]] | None = None
           ) -> dict[str, list[str]]:
    """Group id -> one URL per replica: a `Resolve` entry's addresses from `resolved` (its
    url -> addresses; missing or empty: the URL itself, one replica)."""
    resolved = resolved or {}
    return {g: [u for e in entries
                for u in (e.urls(resolved.get(e.url, ())) if isinstance(e, Resolve) else [e])]
            for g, entries in spec.items()}


def to_json(spec: Backends) -> dict:
    """The spec as the backends file (and POST /admin/plan) writes it."""
    return {g: [e.to_json() if isinstance(e, Resolve) else e for e in entries]
            for g, entries in spec.items()}


def addresses(found: Iterable[Address]) -> list[Address]:
    """Deduplicated, in order (IPv4 before IPv6, numerically)."""
    def key(a: Address):
        try:
            ip = ipaddress.ip_address(a[0].split("%")[0])
            return (ip.version, int(ip), a[0], a[1])
        except ValueError:
            return (9, 0, a[0], a[1])
    return sorted({(str(a), int(p)) for a, p in found}, key=key)


async def resolve(host: str, port: int) -> list[Address]:
    """The addresses `host` resolves to (A and AAAA, by the event loop's getaddrinfo)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return addresses((info[4][0], info[4][1]) for info in infos
                     if info[0] in (socket.AF_INET, socket.AF_INET6))


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def load_backends(path: Path | str, plan: Plan) -> Backends:
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f": line {mark.line + 1}" if mark is not None else ""
        raise HetserveError(f"{path}{line}: not valid YAML") from None
    return parse_backends(data, plan, str(path))
