"""One source of defaults: the shipped params.yaml holds exactly the code's defaults
(tasks/config.py), so a key left out, or an empty file, means what the shipped file says."""

from __future__ import annotations

from pathlib import Path

from flows.params import load_params, read_yaml
from tasks.config import Params

ROOT = Path(__file__).resolve().parents[1]


def _differences(shipped, code, key: str = "") -> list[str]:
    if isinstance(shipped, dict) and isinstance(code, dict):
        return [d for name in sorted(set(shipped) | set(code))
                for d in _differences(shipped.get(name, "<absent>"), code.get(name, "<absent>"), f"{key}.{name}")]
    return [] if shipped == code else [f"{key.lstrip('.')}: params.yaml {shipped!r}, code {code!r}"]


def test_shipped_params_yaml_is_the_code_defaults():
    shipped = load_params(ROOT / "params.yaml").model_dump(mode="json")
    assert _differences(shipped, Params().model_dump(mode="json")) == [], (
        "change the default in tasks/config.py and params.yaml together")


def test_shipped_params_yaml_has_every_section():
    # DVC tracks sections by name and stops on a missing one: the shipped file names them all
    assert set(read_yaml(ROOT / "params.yaml")) == set(Params.model_fields)
