"""Summarise `shc bench` layer tables (JSON) against issue 16's goals: for each SHC method (the
functional call, ``shc:cpu``, against ``plain``; the module, ``shc:cpu:module``, against
``plain:module``), how many layers are within 1.25x (the goal) and 1.10x (the moonshot) of the plain
conv, forward and forward+backward, by the ratio of the minima (of the medians in brackets), the
median ratio and its range, and every layer over a bound.

    python bench/grid_summary.py bench/results/cpu_grid_b32_1t.json [more.json ...]
"""

from __future__ import annotations

import argparse
import json
import statistics

GOAL, MOONSHOT = 1.25, 1.10


def summarise(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    rows = data["rows"]
    info = data["info"]
    lines = [f"{path}: batch {info['batch']}, {info['threads']} thread(s), clock {info.get('clock', 'wall')}"]
    for method in sorted({r["method"] for r in rows if r["method"].startswith("shc")}):
        mine = [r for r in rows if r["method"] == method]
        n = len(mine)
        lines.append(f"  {method} ({n} layers):")
        for mode in ("fwd", "fwdbwd"):
            mins = [r[f"{mode}_min_ratio"] for r in mine]
            meds = [r[f"{mode}_ratio"] for r in mine]
            goal = sum(v <= GOAL for v in mins)
            goal_med = sum(v <= GOAL for v in meds)
            moon = sum(v <= MOONSHOT for v in mins)
            lines.append(
                f"    {mode:>6}: <= {GOAL}x {goal}/{n} ({goal_med}), <= {MOONSHOT}x {moon}/{n}, "
                f"median {statistics.median(mins):.2f}x (range {min(mins):.2f}-{max(mins):.2f})"
            )
            ratios = [(r[f"{mode}_min_ratio"], r["shape"]) for r in mine]
            over = sorted((v for v in ratios if v[0] > MOONSHOT), reverse=True)
            if over:
                lines.append("            over 1.10x: " + ", ".join(f"{s} {v:.2f}x" for v, s in over))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tables", nargs="+", help="JSON files written by `shc bench --json`")
    args = p.parse_args(argv)
    for path in args.tables:
        print(summarise(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
