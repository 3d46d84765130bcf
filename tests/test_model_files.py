"""Model folders: weights are read with safetensors only, and a truncated weights file is one
line naming the source."""

from __future__ import annotations

import shutil

import pytest
import torch

from tasks.config import ModelConfig
from tasks.io.model import ModelSourceError, resolve_source
from tasks.stages.common import StageContext
from tasks.stages.model import model as build_model

CTX = StageContext(lambda line: None)


def test_folder_with_only_a_pickle_is_refused(tmp_path, llama_folder):
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    shutil.copytree(llama_folder, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelSourceError, match=r"model.source = '.*/bin': no .safetensors weights in the folder "
                                               r"\(only pytorch_model.bin: pickle files"):
        resolve_source(str(folder))


def test_truncated_safetensors_in_a_model_folder(tmp_path, llama_folder):
    folder = tmp_path / "trunc"
    shutil.copytree(llama_folder, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ModelSourceError, match=r"model.source = '.*/trunc': cannot read its .safetensors weights "
                                               r"\(truncated or corrupt\?\)"):
        build_model(ModelConfig(source=str(folder)), out=tmp_path / "model", ctx=CTX)
    assert not (tmp_path / "model").exists()


def bin_only_folder(tmp_path, llama_folder, state_dict=None):
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    shutil.copytree(llama_folder, folder)
    torch.save(state_dict if state_dict is not None else load_file(folder / "model.safetensors"),
               folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_allow_pickle_loads_a_bin_only_folder_with_the_same_weights(tmp_path, llama_folder):
    from safetensors.torch import load_file

    folder = bin_only_folder(tmp_path, llama_folder)
    out = build_model(ModelConfig(source=str(folder), allow_pickle=True), out=tmp_path / "model", ctx=CTX)
    original, written = load_file(llama_folder / "model.safetensors"), load_file(out / "model.safetensors")
    assert original.keys() <= written.keys()
    assert all(torch.equal(original[name], written[name]) for name in original)


class RunsCode:
    def __reduce__(self):   # what a hostile pickle does: call a function while it is read
        return (print, ("pickle code ran",))


def test_allow_pickle_still_refuses_a_pickle_that_would_run_code(tmp_path, llama_folder, capsys):
    folder = bin_only_folder(tmp_path, llama_folder, {"payload": RunsCode()})
    with pytest.raises(ModelSourceError, match=r"model.source = '.*/bin': cannot load it: .*weights_only"):
        build_model(ModelConfig(source=str(folder), allow_pickle=True), out=tmp_path / "model", ctx=CTX)
    assert "pickle code ran" not in capsys.readouterr().out
    assert not (tmp_path / "model").exists()
