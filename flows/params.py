"""Read params.yaml once, at the edge, into the frozen `Params` model.

Every validation problem becomes one line naming the key, the value and what is allowed,
raised as ParamsError before any stage starts, so nothing under data/ is touched.

params.yaml is read as YAML 1.2 (ruamel.yaml's pure-Python safe loader), the dialect DVC
itself writes with `dvc exp run -S`: an unquoted `2:4` is the string "2:4" (YAML 1.1 read it
as the base-60 integer 124), `no`/`yes`/`on`/`off` are strings (not booleans that would pass
as a sparsity of 0), and a key repeated in one mapping is an error naming the key and its
lines (YAML 1.1 readers let the last one silently win).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import re

import torch
from pydantic import ValidationError

from tasks.config import Params
from tasks.errors import UserError


class ParamsError(UserError):
    """params.yaml is missing, unreadable or holds a value that is not allowed."""


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (remove it or check its spelling)"
    if error["type"] == "missing":
        return f"{key}: required"
    if isinstance(error["input"], dict):  # a rule across keys: the message names them
        return message
    return f"{key} = {error['input']!r}: {message}"


def parse_params(data: object, origin: str = "params.yaml") -> Params:
    try:
        params = Params.model_validate(data or {})
    except ValidationError as err:
        lines = "\n  ".join(_describe(e) for e in err.errors())
        raise ParamsError(f"{origin}: invalid parameters:\n  {lines}") from None
    check_devices(params, origin)
    return params


def check_devices(params: Params, origin: str) -> None:
    for key, device in (("prune.device", params.prune.device), ("quantize.device", params.quantize.device),
                        ("evaluate.device", params.evaluate.device)):
        if device == "cuda" and not torch.cuda.is_available():
            raise ParamsError(f"{origin}: {key} = 'cuda' but no CUDA GPU is available here (allowed: cpu, cuda)")


def apply_overrides(data: dict, overrides: Mapping[str, object]) -> dict:
    """A copy of params.yaml's data with {"section.key": value} set (nested keys by dots);
    validation then names an unknown key or a bad value as for the file itself."""
    data = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        if not parents:
            raise ParamsError(f"override {dotted!r}: name a key inside a section, e.g. 'prune.sparsity'")
        node = data
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ParamsError(f"override {dotted!r}: {part} is a value, not a section")
            node[part] = node = dict(child)
        node[leaf] = value
    return data


def _yaml_error(path: Path, err: Exception) -> str:
    """One line for a ruamel.yaml error: where, what, and (for a repeated key) which key."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = str(getattr(err, "problem", None) or err).strip()
    if duplicate := re.match(r'found duplicate key "(.*?)" with value', problem):
        first = getattr(err, "context_mark", None)
        inside = f" (in the mapping that starts at line {first.line + 1})" if first is not None else ""
        return (f"{path}: key {duplicate.group(1)!r} is repeated{where}{inside}; a key may appear only once "
                "(merge the two entries)")
    context = getattr(err, "context", None)
    return f"{path}: not valid YAML{where}: {problem}" + (f" ({context})" if context else "")


def read_yaml(path: Path) -> object:
    """params.yaml's data, read as YAML 1.2 with repeated keys refused (see the module docstring)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root)") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder, not a parameters file") from None
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    loader = YAML(typ="safe", pure=True)   # pure: the C loader may not read YAML 1.2
    loader.allow_duplicate_keys = False
    try:
        return loader.load(text)
    except YAMLError as err:
        raise ParamsError(_yaml_error(path, err)) from None


def load_params(path: Path = Path("params.yaml"), overrides: Mapping[str, object] | None = None) -> Params:
    data = read_yaml(path)
    if overrides:
        return parse_params(apply_overrides(data or {}, overrides), f"{path} with overrides {dict(overrides)}")
    return parse_params(data, str(path))
