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
