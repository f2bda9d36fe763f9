"""Mirror a source tree into a build copy by content (tools/cuda_check.sh's step 1).

A file that is new or whose bytes differ is written afresh, so it gets the current time and ninja
rebuilds what depends on it; an unchanged file keeps its time, so nothing else is rebuilt. Copying
with the source's times (tar, cp -p) misses an edit made while the previous build ran: the edited
file's time is then older than the objects built from the old text, and ninja keeps them.

Files under ``dst``'s copies of the tree's top folders that the source no longer has are removed,
except build products (``*.so``, ``__pycache__``, ``_build_info.py``).

    usage: python tools/sync_tree.py SRC_DIR DST_DIR
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys

_PRODUCTS = (".so", ".pyc")


def _is_product(rel: str) -> bool:
    parts = rel.split(os.sep)
    return rel.endswith(_PRODUCTS) or "__pycache__" in parts or parts[-1] == "_build_info.py"


def sync(src: str, dst: str) -> list[str]:
    """Make ``dst`` hold ``src``'s files with the same bytes; returns the relative paths written."""
    written, seen = [], set()
    for root, _dirs, files in os.walk(src):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), src)
            seen.add(rel)
            s, d = os.path.join(src, rel), os.path.join(dst, rel)
            if os.path.isfile(d) and filecmp.cmp(s, d, shallow=False):
                continue
            os.makedirs(os.path.dirname(d), exist_ok=True)
            if os.path.lexists(d):
                os.remove(d)
            shutil.copyfile(s, d)  # a fresh file: the current time, not the source's
            shutil.copymode(s, d)
            written.append(rel)
    for top in {rel.split(os.sep)[0] for rel in seen if os.sep in rel}:
        for root, _dirs, files in os.walk(os.path.join(dst, top)):
            for name in files:
                rel = os.path.relpath(os.path.join(root, name), dst)
                if rel not in seen and not _is_product(rel):
                    os.remove(os.path.join(dst, rel))
    return sorted(written)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    changed = sync(sys.argv[1], sys.argv[2])
    print(f"sync_tree: {len(changed)} file(s) new or changed")
