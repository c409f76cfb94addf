"""Files and directories that readers never see half-written.

A file is written to a hidden sibling, flushed to disk, then renamed over the old one (`write_atomic`); a
directory is built as a hidden sibling, then swapped in by renames (`replacing_directory`, `swap_directory`).
"""

from __future__ import annotations

import os
import secrets
import shutil
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
        old = target.parent / f".{target.name}.old-{os.getpid()}-{time.time_ns()}"
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def replacing_directory(target: Path) -> Iterator[Path]:
    """An empty hidden sibling of `target` to fill; swapped in at `target` when the block ends, deleted if it raises."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        swap_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
