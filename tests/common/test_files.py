"""common/files.py: a reader sees the old file or the new one, and a directory is swapped in whole."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from common.files import replacing_directory, swap_directory, sweep_leftovers, write_atomic

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that imports this checkout."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60)


def test_write_atomic_replaces_the_file_and_leaves_nothing_beside_it(tmp_path: Path):
    path = tmp_path / "deep" / "out.json"
    write_atomic(path, "first ✓")
    assert path.read_text(encoding="utf-8") == "first ✓"
    write_atomic(path, b"\x00second")
    assert path.read_bytes() == b"\x00second"
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_write_atomic_gives_the_mode_a_plain_open_would(tmp_path: Path):
    plain = tmp_path / "plain"
    plain.write_text("x")
    atomic = tmp_path / "atomic"
    write_atomic(atomic, "x")
    assert atomic.stat().st_mode == plain.stat().st_mode


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "new \ud800")  # a lone surrogate has no UTF-8 form: the write fails half-way
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


CRASH_BEFORE_RENAME = """
import os, sys
from pathlib import Path
from common.files import write_atomic
os.replace = lambda *args: os._exit(3)  # the process dies once the data is on disk, before the rename
write_atomic(Path(sys.argv[1]), "new")
"""


def test_a_crash_between_write_and_rename_leaves_the_old_file_intact(tmp_path: Path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    assert _python(CRASH_BEFORE_RENAME, str(path)).returncode == 3
    assert path.read_text() == "old"
    (leftover,) = [p for p in tmp_path.iterdir() if p != path]
    assert leftover.name.startswith(".out.txt.") and leftover.read_text() == "new"


def test_a_reader_sees_the_old_file_or_the_new_one_never_half(tmp_path: Path):
    path = tmp_path / "big.bin"
    versions = {b"a" * 3_000_000, b"b" * 2_000_000}
    write_atomic(path, b"a" * 3_000_000)
    seen: set[tuple[bytes, int]] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = path.read_bytes()
            seen.add((data[:1], len(data)))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(20):
            write_atomic(path, b"b" * 2_000_000 if i % 2 == 0 else b"a" * 3_000_000)
    finally:
        stop.set()
        reader.join()
    assert seen and seen <= {(v[:1], len(v)) for v in versions}


def _fill(directory: Path, names: list[str]) -> None:
    for name in names:
        (directory / name).write_text(name)


def _made(directory: Path, names: list[str]) -> Path:
    directory.mkdir()
    _fill(directory, names)
    return directory


def test_swap_directory_puts_the_new_directory_in_place_and_removes_the_old(tmp_path: Path):
    target, new = tmp_path / "ckpt", tmp_path / "new"
    swap_directory(_made(new, ["first"]), target)  # no old one yet
    assert sorted(p.name for p in target.iterdir()) == ["first"] and not new.exists()
    swap_directory(_made(new, ["second", "third"]), target)
    assert sorted(p.name for p in target.iterdir()) == ["second", "third"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # the old one is gone, nothing left beside


def test_a_reader_never_sees_two_versions_mixed(tmp_path: Path):
    """The new version is complete before it takes the target's name, so no listing mixes two versions.

    (A listing may still show part of one version: the old one, which a reader opened just before the swap,
    is deleted under it; and between the two renames the target is briefly absent.)
    """
    target = tmp_path / "ckpt"
    swap_directory(_made(tmp_path / "first", [f"v0-{j}" for j in range(50)]), target)
    seen: list[set[str]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append({name.split("-")[0] for name in os.listdir(target)})
            except FileNotFoundError:
                pass

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in range(1, 41):
            with replacing_directory(target) as tmp:
                _fill(tmp, [f"v{version}-{j}" for j in range(50)])
    finally:
        stop.set()
        reader.join()
    assert seen and all(len(versions) <= 1 for versions in seen)
    assert sorted(os.listdir(target)) == sorted(f"v40-{j}" for j in range(50))


def test_replacing_directory_deletes_the_new_one_when_the_block_raises(tmp_path: Path):
    target = tmp_path / "ckpt"
    swap_directory(_made(tmp_path / "first", ["weights"]), target)
    with pytest.raises(RuntimeError, match="refused"), replacing_directory(target) as tmp:
        _fill(tmp, ["half"])
        raise RuntimeError("refused")
    assert [p.name for p in target.iterdir()] == ["weights"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


CRASH_WHILE_FILLING = """
import os, sys
from pathlib import Path
from common.files import replacing_directory
with replacing_directory(Path(sys.argv[1])) as tmp:
    (tmp / "half").write_text("half")
    os._exit(3)  # killed while the new directory is half written
"""

CRASH_BETWEEN_RENAMES = """
import os, sys
from pathlib import Path
from common.files import replacing_directory
rename = os.rename
def rename_then_die(src, dst):
    if Path(dst).name.startswith(".ckpt.old-"):
        rename(src, dst)  # the old directory has moved aside...
        os._exit(3)  # ...and the process dies before the new one takes its name
    rename(src, dst)
os.rename = rename_then_die
with replacing_directory(Path(sys.argv[1])) as tmp:
    (tmp / "new").write_text("new")
"""


def test_a_crash_while_filling_leaves_the_old_directory_in_place_and_the_next_write_cleans_up(tmp_path: Path):
    target = tmp_path / "ckpt"
    swap_directory(_made(tmp_path / "first", ["weights"]), target)
    assert _python(CRASH_WHILE_FILLING, str(target)).returncode == 3
    assert [p.name for p in target.iterdir()] == ["weights"]
    (half,) = tmp_path.glob(".ckpt.tmp-*")
    with replacing_directory(target) as tmp:  # the dead writer's half-built directory goes
        assert not half.exists()
        (tmp / "weights2").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_crash_between_the_renames_leaves_the_old_directory_whole_and_the_next_write_puts_it_back(
        tmp_path: Path):
    target = tmp_path / "ckpt"
    swap_directory(_made(tmp_path / "first", ["weights", "manifest.json"]), target)
    assert _python(CRASH_BETWEEN_RENAMES, str(target)).returncode == 3
    assert not target.exists()
    (old,) = tmp_path.glob(".ckpt.old-*")
    assert sorted(p.name for p in old.iterdir()) == ["manifest.json", "weights"]
    assert sweep_leftovers(target)  # the old one back at its name, the dead writer's new one removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "weights"]


def test_what_a_live_writer_is_building_is_left_alone(tmp_path: Path):
    target = tmp_path / "ckpt"
    with replacing_directory(target) as mine:  # this process is alive: its directory is not a leftover
        assert sweep_leftovers(target) == [] and mine.is_dir()
        (mine / "weights").write_text("w")
    assert [p.name for p in target.iterdir()] == ["weights"]
