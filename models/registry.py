"""The checkpoint registry: what lies under the checkpoint root, and whether a checkpoint may be loaded.

`Registry.list` reads every manifest under the root (kind, method, parent, creation time, figures) without
hashing, unless asked to. `Registry.resolve` turns what an operator typed into a directory inside the root and
refuses everything else: URLs, `..`, absolute paths elsewhere, symbolic links that leave the root.
`validate_checkpoint` is the gate before any load: the manifest and the sha256 of every file, safetensors
only (each file's header checked against its size, so a truncated file is named as such), no file that
resolves outside the allowed directory, no remote code, an architecture transformers knows for that kind, and
a tokenizer that fits the model (its ids within the embedding, a chat template, a pad or EOS token for an RM).
"""

from __future__ import annotations

import json
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.checkpoint import MANIFEST, CheckpointError, Kind, Manifest, read_json_object, read_manifest, verify

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_MAX_DEPTH = 4
"""How deep under the root `list` looks for checkpoint directories."""
_MAX_HEADER = 100 << 20
"""The safetensors library's own limit on a header's size."""


class CheckpointNotFound(CheckpointError):
    """The name is acceptable but no checkpoint directory is there."""


class OutsideRoot(CheckpointError):
    """The name points outside the checkpoint root (or is a URL): refused before anything is read."""


@dataclass
class CheckpointInfo:
    name: str
    """Path relative to the root: what `resolve` accepts."""
    kind: str | None = None
    method: str | None = None
    parent: str | None = None
    created: float | None = None
    created_iso: str | None = None
    version: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    size_bytes: int = 0
    valid: bool | None = None
    """None: not checked (manifest read only); True/False after a full verification."""
    error: str | None = None


class Registry:
    def __init__(self, root: Path):
        self.root = Path(root)

    def resolve(self, ref: str) -> Path:
        """The checkpoint directory `ref` names, relative to the root or absolute inside it.

        Raises `OutsideRoot` for URLs, `..` components and anything that resolves (symbolic links followed)
        outside the root; `CheckpointNotFound` when the directory does not exist.
        """
        ref = str(ref).strip()
        if not ref:
            raise CheckpointNotFound("no checkpoint named")
        if "://" in ref or _SCHEME.match(ref):
            raise OutsideRoot(f"{ref!r}: URLs are not accepted; name a checkpoint directory under {self.root}")
        path = Path(ref)
        if ".." in path.parts:
            raise OutsideRoot(f"{ref!r}: '..' is not accepted in a checkpoint name")
        root = self.root.resolve()
        resolved = (path if path.is_absolute() else root / path).resolve()
        if not resolved.is_relative_to(root):
            raise OutsideRoot(f"{ref!r} resolves to {resolved}, outside the checkpoint root {root}")
        if not resolved.is_dir():
            raise CheckpointNotFound(f"{ref!r}: no checkpoint directory at {resolved}")
        return resolved

    def validate(self, ref: str, kind: Kind) -> tuple[Path, Manifest]:
        """Resolve `ref` and run every check a load needs (blocking: hashes every file)."""
        path = self.resolve(ref)
        return path, validate_checkpoint(path, kind, within=self.root)

    def list(self, verify_hashes: bool = False) -> list[CheckpointInfo]:
        """Every checkpoint directory under the root (a directory holding a manifest), sorted by name."""
        root = self.root.resolve()
        if not root.is_dir():
            return []
        found = []
        for path in _checkpoint_dirs(root, root, 0):
            found.append(_info(path, root, verify_hashes))
        return sorted(found, key=lambda info: info.name)


def _checkpoint_dirs(directory: Path, root: Path, depth: int) -> list[Path]:
    """Checkpoint directories under `directory`; hidden ones (write_checkpoint's temporaries) are skipped,
    symbolic links are followed only when they stay inside the root and are never descended into."""
    if (directory / MANIFEST).is_file():
        return [directory]
    if depth >= _MAX_DEPTH:
        return []
    out: list[Path] = []
    try:
        children = sorted(directory.iterdir())
    except OSError:
        return []
    for child in children:
        if child.name.startswith(".") or not child.is_dir():
            continue
        if child.is_symlink():
            if child.resolve().is_relative_to(root) and (child / MANIFEST).is_file():
                out.append(child)
            continue
        out.extend(_checkpoint_dirs(child, root, depth + 1))
    return out


def _info(path: Path, root: Path, verify_hashes: bool) -> CheckpointInfo:
    info = CheckpointInfo(name=str(path.relative_to(root)))
    try:
        info.size_bytes = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        manifest = read_manifest(path)
    except (CheckpointError, OSError) as exc:
        info.valid, info.error = False, str(exc)
        return info
    info.kind, info.method, info.parent, info.version = manifest.kind, manifest.method, manifest.parent, \
        manifest.version
    info.created = manifest.created
    info.created_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(manifest.created))
    info.figures, info.hyperparameters = manifest.figures, manifest.hyperparameters
    if verify_hashes:
        try:
            validate_checkpoint(path, manifest.kind, within=root)
            info.valid = True
        except CheckpointError as exc:
            info.valid, info.error = False, str(exc)
    return info


def validate_checkpoint(path: Path, kind: Kind, within: Path | None = None) -> Manifest:
    """Every check before a load; raises `CheckpointError` with a message that names what is wrong.

    `within`: the directory no file of the checkpoint may resolve outside (the checkpoint itself if None).
    """
    path = Path(path)
    _check_links(path, Path(within) if within is not None else path)
    manifest = verify(path, kind=kind)
    for name in manifest.files:
        if name.endswith(".safetensors"):
            check_safetensors(path / name)
    config = read_json_object(path / "config.json")
    tokenizer_config = _read_json_if(path / "tokenizer_config.json")
    for file, data in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        if data.get("auto_map"):
            raise CheckpointError(f"{path}: {file} asks for custom code (auto_map); trust_remote_code is off")
    _check_architecture(path, config, kind)
    _check_tokenizer(path, kind)
    return manifest


def _check_links(path: Path, within: Path) -> None:
    allowed = within.resolve()
    if not path.resolve().is_relative_to(allowed):
        raise OutsideRoot(f"{path} resolves outside {allowed}")
    for file in path.rglob("*"):
        if file.is_symlink() and not file.resolve().is_relative_to(allowed):
            raise OutsideRoot(f"{path}: {file.relative_to(path)} is a symbolic link to {file.resolve()}, "
                              f"outside {allowed}")


def check_safetensors(file: Path) -> None:
    """The header parses and indexes exactly the bytes the file holds (no truncation, no trailing data)."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{file.name}: truncated ({size} bytes, not even a safetensors header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{file.name}: not a safetensors file or truncated (header of {header_len} "
                                  f"bytes in a file of {size})")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{file.name}: unreadable safetensors header ({exc})") from None
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and "data_offsets" in t]
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        raise CheckpointError(f"{file.name}: truncated weights: the header indexes {expected} bytes, the file "
                              f"has {size}")
    if size > expected:
        raise CheckpointError(f"{file.name}: {size - expected} bytes after the last tensor (not a valid "
                              "safetensors file)")


def _read_json_if(file: Path) -> dict[str, Any]:
    return read_json_object(file) if file.is_file() else {}


def _check_architecture(path: Path, config: dict[str, Any], kind: Kind) -> None:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    model_type = config.get("model_type")
    known = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if kind == "policy" else MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    what = "causal language model" if kind == "policy" else "sequence-classification model"
    if model_type not in known:
        raise CheckpointError(f"{path}: unknown architecture: config.json model_type {model_type!r} is not a "
                              f"{what} this transformers knows")


def _check_tokenizer(path: Path, kind: Kind) -> None:
    from transformers import AutoConfig, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: the tokenizer or config does not load: {exc}") from None
    rows = getattr(config.get_text_config(), "vocab_size", None)
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise CheckpointError(f"{path}: the tokenizer does not match the model: it has {len(tokenizer)} tokens, "
                              f"the model's embedding {rows} rows")
    if tokenizer.chat_template is None:
        raise CheckpointError(f"{path}: the tokenizer has no chat template")
    if kind == "reward" and tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise CheckpointError(f"{path}: the reward model's tokenizer has neither a pad nor an EOS token to pad "
                              "batches with")
