"""``assert_rejected``: the one check every row of a bad-command-line table makes.

A rejected command exits with status 2, says what is wrong in a message that names the
argument, prints no traceback, and writes nothing: not a file, not a folder, not a new mtime.
"""

from __future__ import annotations

import contextlib
import io
import os
import traceback
from pathlib import Path

from shc_kernels import cli


def listing(root) -> dict[str, tuple[int, int]]:
    """{relative path: (mtime_ns, size)} of everything under ``root``, folders included."""
    root = Path(root)
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            found[str(path.relative_to(root))] = (st.st_mtime_ns, st.st_size)
    return found


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``shc ARGV`` run in this process.

    An exception that escapes ``main`` is a traceback the user would see: it is returned as
    status 1 with the formatted traceback in stderr, so the assertion message shows it."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:
            code = exc.code
        except BaseException:  # noqa: BLE001 - a test that must report, not raise
            err.write(traceback.format_exc())
            code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message") prints the message, status 1
        err.write(str(code))
        code = 1
    return code, out.getvalue(), err.getvalue()


def assert_rejected(argv: list[str], expect: str | tuple[str, ...], tmp_path) -> str:
    """``shc ARGV`` exits 2 with each of ``expect`` in stderr, no traceback, and leaves
    ``tmp_path`` exactly as it was. Returns stderr."""
    before = listing(tmp_path)
    code, out, err = run_cli(argv)
    shown = f"shc {' '.join(map(str, argv))}\nstatus {code}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-4000:]}"
    assert code == 2, shown
    assert "Traceback" not in err, shown
    for text in (expect,) if isinstance(expect, str) else expect:
        assert text in err, f"{text!r} not in stderr of\n{shown}"
    after = listing(tmp_path)
    assert after == before, f"{shown}\nchanged under {tmp_path}: " + ", ".join(
        sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    )
    return err
