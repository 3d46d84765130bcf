"""Read params.yaml once, at the edge, into the frozen `Params` model.

Every validation problem becomes one line naming the key, the value and what is allowed,
raised as ParamsError before any stage starts, so nothing under data/ is touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import yaml
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


def load_params(path: Path = Path("params.yaml"), overrides: Mapping[str, object] | None = None) -> Params:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if overrides:
        return parse_params(apply_overrides(data or {}, overrides), f"{path} with overrides {dict(overrides)}")
    return parse_params(data, str(path))
