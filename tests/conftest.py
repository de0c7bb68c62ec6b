import asyncio
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from hetserve.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def catalog():
    return load_catalog()


# ---- running the CLI -------------------------------------------------------------------------


@dataclass
class CliResult:
    """What one CLI run did: exit code (None when main() did not exit), stdout, stderr, wall
    seconds, and the exception that escaped main() if any (its traceback is appended to err)."""

    code: int | None
    out: str
    err: str
    seconds: float
    exception: BaseException | None = None

    def summary(self) -> str:
        first = self.err.strip().splitlines()[0] if self.err.strip() else "<no stderr>"
        if self.exception is not None:
            first = f"{type(self.exception).__name__} escaped main(): {self.exception}"
        return f"exit {self.code}: {first[:300]}"


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


@pytest.fixture
def run_cli(capfd):
    """Run `hetserve ARGS` in this process through hetserve.cli.main (fast); output is read at
    the file-descriptor level, so C-level writes and the CLI's own fd juggling are seen too."""
    from hetserve.cli import main

    def run(*args) -> CliResult:
        capfd.readouterr()
        start = time.perf_counter()
        code, escaped, trace = None, None, ""
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = _exit_code(exc)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - anything escaping main() is a finding
            escaped, trace = exc, traceback.format_exc()
        seconds = time.perf_counter() - start
        out, err = capfd.readouterr()
        return CliResult(code, out, err + trace, seconds, escaped)

    return run


def _address_space_limit(limit: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def run_subprocess(*args, timeout: float = 120, memory_limit: int | None = None) -> CliResult:
    """Run `python -m hetserve ARGS` (the real entry point) in a child process. A run past
    `timeout` is killed and reported with code None; `memory_limit` caps the child's address
    space (bytes; where the platform has RLIMIT_AS), so a runaway allocation ends in a
    MemoryError instead of exhausting the machine."""
    start = time.perf_counter()
    limit = None
    if memory_limit is not None and sys.platform.startswith("linux"):
        limit = _address_space_limit(memory_limit)
    try:
        proc = subprocess.run([sys.executable, "-m", "hetserve", *map(str, args)],
                              capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired as exc:
        def text(data):
            return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")
        return CliResult(None, text(exc.stdout),
                         text(exc.stderr) + f"\n<killed after {timeout:g} s>",
                         time.perf_counter() - start)
    return CliResult(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)


@pytest.fixture(scope="session")
def cli_subprocess():
    return run_subprocess


@pytest.fixture(scope="session")
def small_plan(tmp_path_factory):
    """A plan file made once per session by the real CLI (Llama-3.1-8B, azure-code at 2 req/s,
    the full catalog, proven in simulation). Read it; never change it."""
    path = tmp_path_factory.mktemp("smallplan") / "plan.json"
    res = run_subprocess("plan", "-m", "llama-3.1-8b", "-w", "azure-code", "--rate", "2",
                         "--out", path)
    assert res.code == 0, res.err
    return path


def assert_bad_input(res: CliResult, needs=(), also=(), scrub=()) -> None:
    """The bad-input contract: exit 2, stderr 'error: ...' in at most two lines naming each of
    `needs` (a string, or a tuple of alternatives; case-insensitive), no traceback, nothing on
    stdout. `also`: further problems the caller found (reported together). `scrub`: folders
    (tmp_path) cut out of the message before looking for `needs`, so that a field name in the
    test's own folder name cannot stand in for the message naming it."""
    message = res.err
    for folder in scrub:
        message = message.replace(str(folder), "<tmp>")

    def wanted(need) -> bool:
        alternatives = need if isinstance(need, tuple) else (need,)
        return any(str(a).lower() in message.lower() for a in alternatives)

    problems = list(also)
    if res.exception is not None:
        problems.append("an exception escaped main()")
    if res.code != 2:
        problems.append("exit code is not 2")
    if "Traceback" in res.err or "Traceback" in res.out:
        problems.append("traceback printed")
    if not res.err.startswith("error: "):
        problems.append("stderr does not start with 'error: '")
    if len(res.err.splitlines()) > 2:
        problems.append(f"stderr has {len(res.err.splitlines())} lines")
    if res.out:
        problems.append(f"stdout not empty ({res.out[:80]!r})")
    missing = [n for n in needs if not wanted(n)]
    if missing and res.code == 2:
        problems.append(f"message does not name {' / '.join(map(str, missing))}")
    if problems:
        pytest.fail(f"{res.summary()} | {'; '.join(problems)} | stderr={res.err[-600:]!r}",
                    pytrace=False)


def hang_up_after(stream, chunks: int) -> None:
    """Read `chunks` chunks of an `openai` stream, then close it: a client that goes away."""
    for k, _ in enumerate(stream):
        if k + 1 == chunks:
            break
    stream.close()


@contextmanager
def in_background(start, stop):
    """Await `start()` on a new event loop, run that loop in a daemon thread, and yield what
    `start` returned; on exit await `stop()` there and end the loop (servers the test talks to
    over loopback while it blocks)."""
    loop = asyncio.new_event_loop()
    started = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield started
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
