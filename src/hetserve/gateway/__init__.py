"""The running half's front door: an OpenAI-compatible proxy that routes by the plan."""

from hetserve.gateway.backends import load_backends, parse_backends
from hetserve.gateway.server import Gateway, GatewayServer

__all__ = ["Gateway", "GatewayServer", "load_backends", "parse_backends"]
