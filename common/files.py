"""Files and directories that readers never see half-written.

A file is written to a hidden sibling, flushed to disk, then renamed over the old one (`write_atomic`); a
directory is built as a hidden sibling, then swapped in by renames (`replacing_directory`, `swap_directory`).

The hidden siblings of a directory are named after the host and the process that made them
(`.<name>.tmp-<host>-<pid>-*`, `.<name>.old-<host>-<pid>-*`), so that the next replacement can tell what a
process that died (killed while writing, or between the renames) left behind from what a live one is writing,
and clean up after it (`sweep_leftovers`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) so that a reader sees the old file or the new one, never half of one.

    A crash before the rename leaves the old file as it was (and at worst a hidden `.<name>.<random>.tmp`
    beside it); an error while writing removes the temporary file and raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # the mode honours the umask, as a plain open() of `path` would
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def swap_directory(new: Path, target: Path) -> None:
    """Put the complete directory `new` at `target`, in place of whatever directory was there.

    Two renames: the old directory moves aside to a hidden sibling, `new` takes its name, then the old one is
    deleted. `target` never holds a partial directory; a crash between the renames leaves the old one whole
    at `.<name>.old-*` beside it.
    """
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{_owner()}-{time.time_ns()}"
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())


def _owner() -> str:
    """`<host>-<pid>` of this process, as the hidden siblings' names carry it."""
    return f"{_host()}-{os.getpid()}"


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def sweep_leftovers(target: Path) -> list[Path]:
    """Remove what processes of this host that have died left beside `target`: half-built directories, and old
    ones moved aside before the new one took their place. When `target` itself is missing (a crash between the
    renames), the newest old one is put back instead of removed. The paths removed or put back."""
    target = Path(target)
    ours = f"-{_host()}-"
    found: dict[str, list[Path]] = {"tmp": [], "old": []}
    for kind in found:
        for path in target.parent.glob(f".{target.name}.{kind}{ours}*"):
            pid = path.name.removeprefix(f".{target.name}.{kind}{ours}").split("-", 1)[0]
            if pid.isdigit() and _dead(int(pid)):
                found[kind].append(path)
    if found["old"] and not target.exists():
        newest = max(found["old"], key=lambda p: int(p.name.rsplit("-", 1)[1]))
        os.rename(newest, target)
    for path in found["tmp"] + found["old"]:
        shutil.rmtree(path, ignore_errors=True)
    return found["tmp"] + found["old"]


@contextmanager
def replacing_directory(target: Path) -> Iterator[Path]:
    """An empty hidden sibling of `target` to fill; swapped in at `target` when the block ends, deleted if it raises.
    What a process that died while replacing `target` left beside it is cleaned up first (`sweep_leftovers`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{_owner()}-"))
    try:
        yield tmp
        swap_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
