"""tools/sync_tree.py, the copy that `make cuda-check` and the CUDA wheel build from: an edit must
reach the build copy with a time newer than the objects built before it, even when the edit is
older than those objects (made while the previous build ran); unchanged files keep their times."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "tools" / "sync_tree.py").exists():  # make wheel-test runs a copy of tests/ alone
    pytest.skip("tools/sync_tree.py is not here (installed wheel)", allow_module_level=True)
sys.path.insert(0, str(ROOT / "tools"))

import sync_tree  # noqa: E402


def _write(path: Path, text: str, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_an_edit_older_than_the_objects_still_rebuilds(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    t0 = 1_000_000_000.0
    _write(src / "csrc" / "a.cuh", "int a = 1;\n", t0)
    _write(src / "csrc" / "b.cu", '#include "a.cuh"\n', t0)
    first = sync_tree.sync(str(src), str(dst))
    assert sorted(first) == [os.path.join("csrc", "a.cuh"), os.path.join("csrc", "b.cu")]
    for name in ("a.cuh", "b.cu"):  # as if that copy and its build were made at t0 + 10 .. t0 + 20
        os.utime(dst / "csrc" / name, (t0 + 10, t0 + 10))
    obj_time = t0 + 20
    # the header edited while that build ran: its time is older than the objects
    _write(src / "csrc" / "a.cuh", "int a = 2;\n", t0 + 15)
    assert sync_tree.sync(str(src), str(dst)) == [os.path.join("csrc", "a.cuh")]
    assert (dst / "csrc" / "a.cuh").read_text() == "int a = 2;\n"
    # ninja compares times: the copy must be newer than the objects built from the old text (a
    # copy that kept the source's time, as tar does, would not be); b.cu did not change
    assert os.path.getmtime(dst / "csrc" / "a.cuh") > obj_time
    assert os.path.getmtime(dst / "csrc" / "b.cu") == t0 + 10


def test_unchanged_files_keep_their_times_and_removed_ones_go(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _write(src / "csrc" / "a.cu", "a\n", 1_000_000_000.0)
    _write(src / "csrc" / "gone.cu", "g\n", 1_000_000_000.0)
    _write(src / "setup.py", "s\n", 1_000_000_000.0)
    sync_tree.sync(str(src), str(dst))
    old = 1_100_000_000.0
    os.utime(dst / "csrc" / "a.cu", (old, old))
    (src / "csrc" / "gone.cu").unlink()
    _write(dst / "csrc" / "_C.so", "built\n", old)  # a build product in the copy stays
    assert sync_tree.sync(str(src), str(dst)) == []
    assert os.path.getmtime(dst / "csrc" / "a.cu") == old
    assert not (dst / "csrc" / "gone.cu").exists()
    assert (dst / "csrc" / "_C.so").exists()
