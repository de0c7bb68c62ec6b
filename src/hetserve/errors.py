"""User-facing errors and validated input: one line naming the file, line, field or option and
what was expected (the CLI exits with 2). Every file hetserve reads goes through the readers here,
and every record parsed from one is a `Record` (pydantic: unknown fields and non-finite numbers
refused)."""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError


class HetserveError(Exception):
    """Bad input or an impossible request. The CLI prints it as one line and exits with code 2."""


class Record(BaseModel):
    """Base of every validated record: unknown fields, NaN and infinities are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    _where: str = PrivateAttr(default="")  # read from a file: "FILE: line N" (messages)

    def __eq__(self, other: object) -> bool:
        """As pydantic compares, less where each record was read from."""
        if isinstance(other, Record) and self._where != other._where:
            same = self.model_copy()
            same._where = other._where
            return BaseModel.__eq__(same, other)
        return super().__eq__(other)


MAX_RATE = 1e9  # req/s: more is a typo, and sums of rates overflow on the way to "inf replicas"


def positive(value: Any, option: str, *, integer: bool = False, allow_inf: bool = False) -> float:
    """`value` as a finite number > 0 (an integer >= 1 with integer=True), else a HetserveError
    naming `option`."""
    kind = "an integer >= 1" if integer else "a number > 0"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (number > 0) or (math.isinf(number) and not allow_inf) \
            or (integer and number != int(number)):
        raise HetserveError(f"{option}: expected {kind}, got {value!r}")
    return int(number) if integer else number


def check_rate(value: Any, option: str = "--rate") -> float:
    """A request rate: a finite number of req/s, > 0 and at most MAX_RATE."""
    number = positive(value, option)
    if number > MAX_RATE:
        raise HetserveError(f"{option}: expected at most {MAX_RATE:g} req/s, got {value!r}")
    return number


_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
IMAGE_REFERENCE = re.compile(
    rf"(?:(?:{_HOST}(?:\.{_HOST})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?/)?"  # registry[:port]/
    rf"{_COMPONENT}(?:/{_COMPONENT})*"  # repository path
    r"(?::[\w][\w.-]{0,127})?"  # :tag
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")  # @digest


def image_reference(value: str, option: str) -> str:
    """`value` if it is a container image reference (registry/name:tag@digest), else a
    HetserveError naming `option`."""
    if not isinstance(value, str) or len(value) > 4096 or not IMAGE_REFERENCE.fullmatch(value):
        raise HetserveError(f"{option}: expected a container image like "
                            f"vllm/vllm-openai:v0.8.5, got {_short(value)}")
    return value


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


def _short(value: Any, limit: int = 60) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_message(err: ValidationError, where: str) -> str:
    """Compress a pydantic error into one line: where, which field, what was expected."""
    errors = err.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    if first["type"] == "missing":
        return f"{where}: missing field '{loc}'{more}"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown field '{loc}'{more}"
    msg = " ".join(str(first["msg"]).split()).removeprefix("Value error, ")
    field = f"field '{loc}': " if loc else ""
    if first["type"] in ("value_error", "assertion_error") and not loc:
        return f"{where}: {msg}{more}"
    return f"{where}: {field}{msg} (got {_short(first.get('input'))}){more}"


def read_text(path: Path | str) -> str:
    """A file's text (UTF-8); a folder, a missing file or binary content is a HetserveError."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise HetserveError(f"{path}: is a folder, expected a file") from None
    except OSError as exc:
        raise HetserveError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise HetserveError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def check_output(path: Path | str | None, option: str) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise HetserveError(f"{option} {path}: is a folder, expected a file name")
    folder = path.parent
    if not folder.is_dir():
        raise HetserveError(f"{option} {path}: folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise HetserveError(f"{option} {path}: cannot write in folder '{folder}'")


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def check_plot(path: Path | str | None, option: str = "--plot") -> None:
    """Refuse a plot file name that cannot be written, or whose suffix names a format that
    cannot be drawn (.png, .pdf or .svg), before any work is done."""
    if path is None:
        return
    check_output(path, option)
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise HetserveError(f"{option} {path}: expected a .png, .pdf or .svg file name")


def write_text(path: Path | str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise HetserveError(f"{path}: cannot write ({exc.strerror})") from None


def read_csv_records(path: Path | str, model: type[Record], required: Iterable[str],
                     lower: Iterable[str] = ()) -> list:
    """Every row of a CSV file validated as `model` (empty cells left out, so that defaults
    apply; the columns in `lower` lower-cased). Errors name the file, line and field; a file
    without a row, or without a `required` column, is an error too."""
    import csv

    lines = read_text(path).removeprefix("\ufeff").splitlines()  # a byte-order mark: no text
    out = []
    reader = csv.DictReader(lines)
    try:
        if reader.fieldnames:
            reader.fieldnames = [f.strip() for f in reader.fieldnames]
        missing = [f for f in required if f not in (reader.fieldnames or [])]
        if missing:
            raise HetserveError(f"{path}: line 1: missing column '{missing[0]}'")
        for row in reader:
            where = f"{path}: line {reader.line_num}"
            if None in row or None in row.values():
                raise HetserveError(f"{where}: expected {len(reader.fieldnames)} fields")
            cells = {k: v.strip() for k, v in row.items() if v.strip()}
            for key in lower:
                if key in cells:
                    cells[key] = cells[key].lower()
            try:
                record = model.model_validate(cells)
            except ValidationError as err:
                raise HetserveError(validation_message(err, where)) from None
            record._where = where
            out.append(record)
    except csv.Error as exc:
        raise HetserveError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    if not out:
        raise HetserveError(f"{path}: no rows")
    return out


def csv_columns(path: Path | str) -> list[str]:
    """The header of a CSV file (its first line's fields)."""
    import csv

    first = read_text(path).removeprefix("\ufeff").partition("\n")[0]
    try:
        return [c.strip() for c in next(csv.reader([first]), [])]
    except csv.Error:
        return []


def load_json(path: Path | str) -> Any:
    """Read a JSON file; errors name the file and line."""
    import json

    text = read_text(path)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise HetserveError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # NaN/Infinity, absurdly deep nesting
        raise HetserveError(f"{path}: not valid JSON ({exc})") from None


def load_record(path: Path | str, model: type[Record], what: str = "a JSON object"):
    """A JSON file validated as `model` (HetserveError naming the file, line or field)."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise HetserveError(f"{path}: expected {what}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise HetserveError(validation_message(err, str(path))) from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def load_yaml(path: Path, loader: type = yaml.SafeLoader) -> Any:
    """Read a YAML (or JSON) file; errors name the file and line."""
    text = read_text(path)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader or a subclass)
    except RecursionError:
        raise HetserveError(f"{path}: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML/JSON"
        raise HetserveError(f"{path}:{line} {problem}") from None
