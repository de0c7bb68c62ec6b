"""User-facing errors: one line naming the file, line or field and what was expected (exit 2)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class HetserveError(Exception):
    """Bad input or an impossible request. The CLI prints it as one line and exits with code 2."""


def suggest(name: str, known: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest known names, or '' when nothing is close."""
    known = list(known)
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
    if not close:
        return f"; known: {', '.join(sorted(known))}"
    return " (did you mean " + " or ".join(lowered[c] for c in close) + "?)"


def lookup(kind: str, name: str, table: dict[str, Any]) -> Any:
    """Case-insensitive lookup that fails with a suggestion of close names."""
    if name in table:
        return table[name]
    for key, value in table.items():
        if key.lower() == name.lower():
            return value
    raise HetserveError(f"unknown {kind} '{name}'{suggest(name, table)}")


def validation_message(err: ValidationError, where: str) -> str:
    """Compress a pydantic error into one line: where, which field, what was expected."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "missing":
        return f"{where}: missing field '{loc}'"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown field '{loc}'"
    return f"{where}: field '{loc}': {first['msg']} (got {first.get('input')!r})"


def read_text(path: Path | str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise HetserveError(f"{path}: cannot read ({exc.strerror})") from None


def load_json(path: Path | str) -> Any:
    """Read a JSON file; errors name the file and line."""
    import json

    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HetserveError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None


def load_yaml(path: Path) -> Any:
    """Read a YAML (or JSON) file; errors name the file and line."""
    text = read_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML/JSON"
        raise HetserveError(f"{path}:{line} {problem}") from None
