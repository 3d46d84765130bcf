"""Packaged models by short name (tasks/io/model.py PACKAGED): a GGUF split into chunk wheels is
assembled into the cache once, checked against its published sha256, and a missing, wrong or
damaged install is one line saying what to pip install. The wheels here are fakes written by the
test (the real Gemma chunks are 240 MB); their modules and dist-info sit on sys.path as pip
would leave them."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import pytest

from tasks.io import model as model_io
from tasks.io.model import ModelSourceError, Packaged, resolve_source

CHUNKS = [b"GGUF" + bytes(range(256)) * 3, bytes(range(255, -1, -1)) * 2, b"tail"]


def fake_install(site: Path, version: str = "1.0.0", chunks: list[bytes] = CHUNKS) -> Packaged:
    """Three chunk modules and the distribution's metadata under `site`; the entry that reads them."""
    parts = []
    for i, chunk in enumerate(chunks):
        module = f"fake_model_part{i + 1}"
        (site / module / "data").mkdir(parents=True)
        (site / module / "__init__.py").write_text("")
        (site / module / "data" / f"fake.gguf.part0{i}").write_bytes(chunk)
        parts.append((module, f"data/fake.gguf.part0{i}"))
    dist = site / f"fake_model-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-model\nVersion: {version}\n")
    return Packaged("fake-model", "1.0.0", "fake.gguf", tuple(parts),
                    sha256=hashlib.sha256(b"".join(CHUNKS)).hexdigest())


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield site
    importlib.invalidate_caches()


def register(monkeypatch, entry: Packaged) -> None:
    importlib.invalidate_caches()
    monkeypatch.setitem(model_io.PACKAGED, "fake", entry)


def test_chunks_are_assembled_once_into_the_cache(site, tmp_path, monkeypatch):
    register(monkeypatch, fake_install(site))
    src = resolve_source("fake")
    gguf = Path(src.location) / src.gguf_file
    assert gguf == tmp_path / "cache" / "prunepipe" / "fake.gguf"
    assert gguf.read_bytes() == b"".join(CHUNKS)
    assert src.record("fake") == {"kind": "gguf", "package": "fake-model", "version": "1.0.0", "file": "fake.gguf"}
    stamp = gguf.stat().st_mtime_ns
    assert resolve_source("fake") == src and gguf.stat().st_mtime_ns == stamp   # reused, not rewritten
    assert [p.name for p in gguf.parent.iterdir()] == ["fake.gguf"]            # no temporary left


def test_a_damaged_cached_copy_is_rebuilt(site, monkeypatch):
    register(monkeypatch, fake_install(site))
    src = resolve_source("fake")
    gguf = Path(src.location) / src.gguf_file
    gguf.write_bytes(b"GGUF truncated")
    resolve_source("fake")
    assert gguf.read_bytes() == b"".join(CHUNKS)


def test_chunks_that_do_not_match_the_sha256_leave_nothing(site, tmp_path, monkeypatch):
    register(monkeypatch, fake_install(site, chunks=[*CHUNKS[:2], b"tale"]))
    with pytest.raises(ModelSourceError, match=r"model.source = 'fake': the chunks of fake-model do not assemble "
                                               r"to its published sha256 .*pip install --force-reinstall fake-model==1.0.0"):
        resolve_source("fake")
    assert list((tmp_path / "cache" / "prunepipe").iterdir()) == []


def test_not_installed_says_what_to_install(site, monkeypatch):
    register(monkeypatch, Packaged("fake-model", "1.0.0", "fake.gguf", (("fake_model_part1", "data/x"),),
                                   install="pip install fake-model==1.0.0: 1 KB"))
    with pytest.raises(ModelSourceError, match=r"^model.source = 'fake' needs the package fake-model "
                                               r"\(pip install fake-model==1.0.0: 1 KB\)$"):
        resolve_source("fake")


def test_another_version_is_refused(site, monkeypatch):
    register(monkeypatch, fake_install(site, version="2.0.0"))
    with pytest.raises(ModelSourceError, match=r"fake-model 2.0.0 is installed, prunepipe reads 1.0.0 "
                                               r"\(pip install fake-model==1.0.0\)"):
        resolve_source("fake")


def test_a_missing_chunk_is_named(site, monkeypatch):
    entry = fake_install(site)
    (site / "fake_model_part2" / "data" / "fake.gguf.part01").unlink()
    register(monkeypatch, entry)
    with pytest.raises(ModelSourceError, match=r"fake_model_part2/data/fake.gguf.part01 is missing \(reinstall: "):
        resolve_source("fake")


def test_unknown_source_lists_the_short_names():
    with pytest.raises(ModelSourceError, match=r"neither a packaged model \(default, gemma3-270m\)"):
        resolve_source("gemma3")


def test_a_cache_that_cannot_be_written_is_one_line(site, tmp_path, monkeypatch):
    register(monkeypatch, fake_install(site))
    (tmp_path / "cache").write_text("not a folder")   # XDG_CACHE_HOME names a file
    with pytest.raises(ModelSourceError, match=r"^model.source = 'fake': cannot assemble .*/cache/prunepipe/fake.gguf: "
                                               r"\[Errno 20\] Not a directory"):
        resolve_source("fake")
