"""Stage artifacts: a directory of safetensors/JSON files plus a `metadata.json`.

metadata.json = {"kind", "version", "config", "inputs", "libraries", "files": {name: sha256}, ...}.
Writes are atomic: everything goes into a hidden temporary sibling that is renamed into
place only once complete, so a killed stage never leaves a directory a reader (or DVC)
would take as finished. Readers check kind, version and every file's digest.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tasks.errors import UserError

METADATA = "metadata.json"
_LIBRARIES = ("prunepipe", "torch", "transformers", "safetensors")


class ArtifactError(UserError):
    """A stage artifact is missing, incomplete, altered or of the wrong kind/version."""


def _disk_full(err: BaseException) -> bool:
    """ENOSPC from Python's own writes, or as safetensors' Rust writer words it."""
    return ((isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT))
            or "No space left on device" in str(err) or "Disk quota exceeded" in str(err))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    found = {}
    for name in _LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_artifact(final: Path, kind: str, version_: int, metadata: dict,
                   write: Callable[[Path], None]) -> Path:
    """Run `write(tmp_dir)`, add metadata.json with file digests, then rename into `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*-*"):  # left by a run killed with SIGKILL
        if not _writer_alive(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        files = {p.relative_to(tmp).as_posix(): file_sha256(p)
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        record = {"kind": kind, "version": version_, **metadata,
                  "libraries": library_versions(), "files": files}
        (tmp / METADATA).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        _replace_dir(tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(err):
            free = shutil.disk_usage(final.parent).free / 2**30
            kept = f"the previous {final.name} is kept" if final.exists() else f"nothing was written to {final}"
            raise ArtifactError(f"{final}: the disk is full ({free:.1f} GiB free after removing the partial write; "
                                f"{kept}): free some space (old sweep points under data/sweep/, `dvc gc -w`) and "
                                "re-run") from None
        raise
    return final


def _writer_alive(name: str) -> bool:
    """Whether the process that made the temporary sibling `name` (".<artifact>.tmp-<pid>-<id>")
    still runs: its folder is being filled, not stale. Names without a pid (older runs) are stale."""
    match = re.search(r"\.(?:tmp|old)-(\d+)-[0-9a-f]+$", name)
    if not match:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return True      # another thread of this process (the sweep's local workers) is writing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True      # alive, another user's
    return True


def _replace_dir(src: Path, dst: Path) -> None:
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def read_metadata(directory: Path, kind: str, version_: int, verify: bool = True) -> dict:
    """Load and check an artifact's metadata; with `verify`, re-hash every file it lists."""
    directory = Path(directory)
    meta_path = directory / METADATA
    if not meta_path.is_file():
        raise ArtifactError(f"{directory}: not a complete prunepipe artifact ({METADATA} is missing); "
                            "re-run the stage that writes it")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{meta_path}: not valid JSON ({err}); the file is altered or truncated") from None
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        found = meta.get("kind") if isinstance(meta, dict) else None
        raise ArtifactError(f"{meta_path}: expected a {kind!r} artifact, found {found!r}")
    if meta.get("version") != version_:
        raise ArtifactError(f"{meta_path}: {kind} version {meta.get('version')!r} is not supported; "
                            f"this prunepipe reads version {version_}")
    if verify:
        for name, expected in meta.get("files", {}).items():
            path = directory / name
            if not path.is_file():
                raise ArtifactError(f"{path}: file listed in {METADATA} is missing")
            if file_sha256(path) != expected:
                raise ArtifactError(f"{path}: sha256 does not match {METADATA}; the file is altered or "
                                    "truncated (re-run the stage that writes it)")
    return meta


def check_artifact(directory: Path) -> dict:
    """An input artifact of any kind checked up front, before a stage spends time on others:
    its metadata.json readable and every file it lists intact (as `read_metadata` checks)."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / METADATA).read_text())
    except (OSError, ValueError):
        meta = None            # read_metadata names what is wrong: missing, truncated, not JSON
    meta = meta if isinstance(meta, dict) else {}
    return read_metadata(directory, meta.get("kind"), meta.get("version"))


def artifact_digest(directory: Path) -> str:
    """One digest for a whole artifact: its metadata lists every file's sha256."""
    return file_sha256(Path(directory) / METADATA)


def write_json(path: Path, data: dict) -> Path:
    """Write through a temporary sibling and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path
