"""The YAML text of a run config: reading the file and applying ``--set key=value`` overrides.

Every problem is a :class:`ConfigError` whose message is one line naming the file or the key and the
problem (a YAML syntax error with its line and column), so an entrypoint can print it as is.
:mod:`ray_jobs.config` validates the result and re-exports everything here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "one_line", "read_yaml", "parse_override", "apply_overrides"]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key(s)."""


def one_line(text: Any) -> str:
    """``text`` with its lines joined (``; ``) and runs of blanks collapsed."""
    return "; ".join(" ".join(line.split()) for line in str(text).splitlines() if line.strip())


def _yaml_problem(e: yaml.YAMLError) -> str:
    """'line L, column C: problem (context)' of a YAML error (1-based, as editors count)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or ""
    context = getattr(e, "context", None)
    if mark is None or not problem:
        return one_line(e).replace('in "<unicode string>", ', "")
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    return f"{where}: {problem}" + (f" ({context})" if context else "")


def read_yaml(path: str | os.PathLike) -> dict:
    """The mapping in the YAML file ``path``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}" if not p.exists() else f"config file {p} is not a file")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML at {_yaml_problem(e)}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a text (UTF-8) file: byte {e.start} cannot be decoded") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file: {e.strerror or e}") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got a {type(raw).__name__}")
    return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3); the value is a YAML scalar / flow collection."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {_yaml_problem(e)}") from None
    return key.split("."), value


def _child(node: Any, part: str, path: str, create: bool):
    if isinstance(node, list):
        if part.lstrip("-").isdigit():
            i = int(part)
            if not -len(node) <= i < len(node):
                raise ConfigError(f"--set {path}: index {i} out of range (list has {len(node)} items)")
            return i
        for i, item in enumerate(node):
            if isinstance(item, dict) and item.get("name") == part:
                return i
        names = [it.get("name") for it in node if isinstance(it, dict)]
        raise ConfigError(f"--set {path}: no list entry named {part!r} (entries: {names})")
    if isinstance(node, dict):
        if part not in node and create:
            node[part] = {}
        return part
    raise ConfigError(f"--set {path}: cannot descend into a {type(node).__name__}")


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Apply ``--set`` items to a raw config dict in order (later items win). Unknown keys are kept
    here and rejected by validation, which names them."""
    for item in overrides or []:
        parts, value = parse_override(item)
        node = raw
        for depth, part in enumerate(parts[:-1]):
            k = _child(node, part, ".".join(parts[: depth + 1]), create=True)
            if node[k] is None:
                node[k] = {}
            node = node[k]
        k = _child(node, parts[-1], ".".join(parts), create=False)
        node[k] = value
    return raw
