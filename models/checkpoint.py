"""The checkpoint format: a Hugging Face directory plus `manifest.json`, written atomically, verified by hash.

A checkpoint directory holds `config.json`, `*.safetensors` weights, tokenizer files with a chat template, and
a manifest that records what the checkpoint is (kind, method, parent), how it was made (hyper-parameters), how
good it is (figures), and the sha256 of every file beside it. Loading code calls `verify` first, so a truncated,
tampered or pickled file never reaches `from_pretrained`; the serving backends have it copy the checkpoint as it
hashes it and load the copy, so that what they load is what was hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.files import replacing_directory, write_atomic

MANIFEST = "manifest.json"
Kind = Literal["policy", "reward"]
# Formats that unpickle on load: never accepted beside a checkpoint.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint that must not be loaded: missing, malformed, tampered or unsafe."""


@dataclass
class Manifest:
    kind: Kind
    method: str
    parent: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    """sha256 of every file in the directory but the manifest, by relative path."""
    created: float = field(default_factory=time.time)
    version: str = ""
    """`<method>-<first 10 hex of the hash over all file hashes>`: names what served a request."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            manifest = cls(**data)
        except TypeError as exc:
            raise CheckpointError(f"malformed manifest: {exc}") from exc
        if manifest.kind not in ("policy", "reward"):
            raise CheckpointError(f"manifest kind must be 'policy' or 'reward', got {manifest.kind!r}")
        if not isinstance(manifest.files, dict) or not manifest.files:
            raise CheckpointError("manifest lists no files")
        return manifest


def sha256_file(path: Path, copy_to: Path | None = None) -> str:
    """The file's sha256; with `copy_to`, every block read is also written there, so the copy is what was hashed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f, ExitStack() as stack:
        out = stack.enter_context(open(copy_to, "xb")) if copy_to is not None else None
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            if out is not None:
                out.write(block)
    return digest.hexdigest()


def _hash_files(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def _version(method: str, files: dict[str, str]) -> str:
    digest = hashlib.sha256("".join(f"{k}:{v}" for k, v in sorted(files.items())).encode()).hexdigest()
    return f"{method}-{digest[:10]}"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def write_checkpoint(
    out_dir: Path,
    save: Callable[[Path], None],
    *,
    kind: Kind,
    method: str,
    parent: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    figures: dict[str, Any] | None = None,
) -> Manifest:
    """Build a checkpoint in a temporary sibling directory, hash it, then move it into place.

    `save(tmp_dir)` writes the model and tokenizer (e.g. `save_pretrained`). `out_dir` never holds a partial
    directory: a crash leaves the previous checkpoint or the new one there, or, between the two renames of
    `swap_directory`, the previous one whole beside it.
    """
    with replacing_directory(Path(out_dir)) as tmp:
        save(tmp)
        unsafe = [p.name for p in tmp.rglob("*") if p.suffix in _PICKLE_SUFFIXES]
        if unsafe:
            raise CheckpointError(f"refusing to write pickled files: {unsafe}")
        files = _hash_files(tmp)
        manifest = Manifest(
            kind=kind,
            method=method,
            parent=parent,
            hyperparameters=hyperparameters or {},
            figures=figures or {},
            files=files,
            version=_version(method, files),
        )
        write_atomic(tmp / MANIFEST, manifest.to_json())
    return manifest


def read_json_object(file: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint's file, or a `CheckpointError` saying what is wrong with it."""
    if not file.is_file():
        raise CheckpointError(f"{file.parent}: no {file.name}")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return data


def read_manifest(directory: Path) -> Manifest:
    return Manifest.from_dict(read_json_object(Path(directory) / MANIFEST))


def _check_inside(directory: Path, names: Iterable[str]) -> None:
    """Each name is a relative path without `..` that resolves (links followed) inside `directory`."""
    inside = directory.resolve()
    for name in names:
        relative = Path(name)
        if (not relative.parts or relative.is_absolute() or ".." in relative.parts
                or not (directory / relative).resolve().is_relative_to(inside)):
            raise CheckpointError(f"{directory}: the manifest lists {name!r}, outside the checkpoint")


def verify(directory: Path, kind: Kind | None = None, copy_to: Path | None = None) -> Manifest:
    """Check the manifest, its version and the sha256 of every file; raise `CheckpointError` on any mismatch.

    With `copy_to` (an empty directory), each listed file is copied there as it is hashed: loading from the copy
    loads the bytes this call verified, whatever is written to `directory` meanwhile.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory")
    manifest = read_manifest(directory)
    if kind is not None and manifest.kind != kind:
        raise CheckpointError(f"{directory}: a {manifest.kind} checkpoint, expected a {kind} checkpoint")
    _check_inside(directory, manifest.files)
    expected_version = _version(manifest.method, manifest.files)
    if manifest.version != expected_version:
        raise CheckpointError(f"{directory}: the manifest's version {manifest.version!r} does not name its files "
                              f"(their hashes give {expected_version!r})")
    present = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST}
    pickled = sorted(name for name in present if Path(name).suffix in _PICKLE_SUFFIXES)
    if pickled:
        raise CheckpointError(f"{directory}: pickled files are never loaded: {pickled}")
    if not any(name.endswith(".safetensors") for name in manifest.files):
        raise CheckpointError(f"{directory}: no safetensors weights listed in the manifest")
    for name, expected in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{directory}: missing file {name}")
        copy = None
        if copy_to is not None:
            copy = copy_to / name
            copy.parent.mkdir(parents=True, exist_ok=True)
        if sha256_file(path, copy) != expected:
            raise CheckpointError(f"{directory}: sha256 mismatch for {name} (tampered or truncated)")
    unlisted = sorted(present - set(manifest.files))
    if unlisted:
        raise CheckpointError(f"{directory}: files not in the manifest: {unlisted}")
    return manifest


def checkpoint_root() -> Path:
    """Where checkpoints live: `$BON_CHECKPOINTS`, else `checkpoints/` in the working directory."""
    return Path(os.environ.get("BON_CHECKPOINTS", "checkpoints"))
