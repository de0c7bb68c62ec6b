"""The Ray Serve side of `hetserve deploy --target ray`: a deployment that runs one server
process (an engine, or hetserve's gateway) on a free local port and forwards every request to
it, streaming. Imported by Ray Serve from the generated config; needs `ray[serve]`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from ray import serve
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

READY_SECONDS = 1800.0  # an engine may load its weights this long
HEALTH_TIMEOUT = 5.0  # a saturated engine may take seconds to answer /health
STOP_SECONDS = 30.0
HOP = {"content-length", "transfer-encoding", "connection", "keep-alive", "host",
       "content-encoding"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_argv(command: list[str], folder: str, port: int) -> list[str]:
    """`command` as this process runs it: `hetserve` as this Python's module, `{dir}` as the
    folder its files were written to, and its --port replaced by `port`."""
    argv = [a.replace("{dir}", folder) for a in command]
    if argv and argv[0] == "hetserve":
        argv = [sys.executable, "-m", "hetserve", *argv[1:]]
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    if "--host" in argv:
        argv[argv.index("--host") + 1] = "127.0.0.1"
    return argv


@serve.deployment
class Process:
    def __init__(self, command: list[str], files: dict[str, str] | None = None) -> None:
        self.folder = tempfile.mkdtemp(prefix="hetserve-")
        for name, text in (files or {}).items():
            Path(self.folder, name).write_text(text)
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        # a session of its own: stopping it stops whatever it started (an engine's workers)
        self.proc = subprocess.Popen(local_argv(command, self.folder, port),
                                     start_new_session=True)
        self.session: aiohttp.ClientSession | None = None
        deadline = time.monotonic() + READY_SECONDS
        while not self._ready():
            problem = (f"{command[0]} exited with {self.proc.returncode}"
                       if self.proc.poll() is not None else
                       f"{command[0]}: /health did not answer in {READY_SECONDS:.0f} s"
                       if time.monotonic() > deadline else None)
            if problem:
                self._stop()
                raise RuntimeError(problem)
            time.sleep(0.2)

    def _ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(self.base + "/health", timeout=HEALTH_TIMEOUT) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _stop(self) -> None:
        """SIGTERM to the process and all it started; SIGKILL what is left after STOP_SECONDS."""
        proc = getattr(self, "proc", None)
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    async def check_health(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the process exited with {self.proc.returncode}")
        if not await asyncio.to_thread(self._ready):
            raise RuntimeError("/health did not answer 200")

    async def __call__(self, request: Request) -> Response:
        if self.session is None:
            self.session = aiohttp.ClientSession(  # max_ongoing_requests bounds concurrency
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        path = request.url.path[len(request.scope.get("root_path", "")):] or "/"
        if request.url.query:
            path += "?" + request.url.query
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        upstream = await self.session.request(request.method, self.base + path,
                                              headers=headers, data=await request.body())
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP}

        async def body():
            try:
                async for chunk in upstream.content.iter_any():
                    yield chunk
            finally:
                upstream.release()

        return StreamingResponse(body(), status_code=upstream.status, headers=out)

    def __del__(self) -> None:
        self._stop()


def app(args: dict):
    """The application of one config entry: args {command, files}."""
    return Process.bind(list(args["command"]), dict(args.get("files") or {}))
