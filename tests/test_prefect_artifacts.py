"""What Prefect shows of a run (flows/artifacts.py) and deployment parameter overrides
(flows/params.apply_overrides). The deployment itself, with its artifacts read back through a
server's API, is tests/test_deploy.py."""

from __future__ import annotations

import json

import pytest

from flows.artifacts import compress_report, figure_rows, stage_report
from flows.params import ParamsError, apply_overrides, load_params, parse_params
from tasks.stages.graph import STAGES


def test_overrides_set_nested_keys_on_a_copy():
    data = {"prune": {"method": "wanda", "sparsity": 0.5, "owl": {"enabled": False}}}
    got = apply_overrides(data, {"prune.sparsity": 0.6, "prune.owl.enabled": True, "quantize.bits": 8})
    assert got == {"prune": {"method": "wanda", "sparsity": 0.6, "owl": {"enabled": True}}, "quantize": {"bits": 8}}
    assert data["prune"]["sparsity"] == 0.5 and data["prune"]["owl"] == {"enabled": False}


@pytest.mark.parametrize("overrides,line", [
    ({"sparsity": 0.6}, "override 'sparsity': name a key inside a section, e.g. 'prune.sparsity'"),
    ({"prune.method.x": 1}, "override 'prune.method.x': method is a value, not a section"),
])
def test_bad_override_keys_are_named(overrides, line):
    with pytest.raises(ParamsError) as err:
        apply_overrides({"prune": {"method": "wanda"}}, overrides)
    assert str(err.value) == line


def test_overridden_params_are_validated_like_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("prune:\n  sparsity: 0.5\n")
    assert load_params(path, {"prune.sparsity": 0.6}).prune.sparsity == 0.6
    assert path.read_text() == "prune:\n  sparsity: 0.5\n"
    with pytest.raises(ParamsError) as err:
        load_params(path, {"prune.sparsity": 1.5})
    assert str(err.value) == (f"{path} with overrides {{'prune.sparsity': 1.5}}: invalid parameters:\n"
                              "  prune.sparsity = 1.5: sparsity must be a fraction in [0, 1), got 1.5")


def test_stage_figures_and_report(tmp_path):
    out = tmp_path / "eval_dense"
    out.mkdir()
    (out / "metadata.json").write_text(json.dumps({"kind": "perplexity", "version": 1, "key": "k", "perplexity": 16.31,
                                                   "tokens": 16384, "files": {"perplexity.json": "00"}}))
    stats = tmp_path / "prune_run.json"
    stats.write_text(json.dumps({"prune_seconds": 98.5, "solve_seconds_per_layer": [0.3, 0.2]}))
    outputs = {"out": str(out), "run_stats": str(stats), "plot": str(tmp_path / "layer_sparsity.png")}
    assert figure_rows(outputs) == [{"output": str(out), "figure": "perplexity", "value": 16.31},
                                    {"output": str(out), "figure": "tokens", "value": 16384},
                                    {"output": str(stats), "figure": "prune_seconds", "value": 98.5}]

    params = parse_params({"evaluate": {"max_windows": 32}})
    report = stage_report(STAGES["evaluate_dense"], {"evaluate": params.evaluate}, outputs)
    assert report.startswith("# Stage `evaluate_dense`\n\n## Params\n\n```json\n{\n  \"evaluate\": {")
    assert '"max_windows": 32' in report
    assert report.endswith(f"## Plots\n\n- `{tmp_path / 'layer_sparsity.png'}`")


def test_compress_report_has_metrics_then_every_params_section():
    params = parse_params({"prune": {"sparsity": 0.6}})
    report = compress_report(params, {"ppl_dense": 16.31, "sparsity": 0.6, "timings": {"prune_s": 98}})
    assert "| `ppl_dense` | 16.31 |\n| `sparsity` | 0.6 |\n| `timings.prune_s` | 98 |" in report
    assert report.index("## Metrics") < report.index("## Params") < report.index("## Plots")
    assert all(f'"{section}": {{' in report for section in ("model", "prune", "quantize", "pack", "evaluate"))
