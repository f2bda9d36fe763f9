"""Build shc_kernels._C_sim: csrc/cuda compiled as host C++ against csrc/simt (`make cuda-sim`).

One translation unit (sim_module.cpp) at -O1, straight through the C++ compiler: not part of
setup.py's build, never in the wheel. Rebuilt only when a source it includes changed.

    python tools/simt_build.py                        # shc_kernels/_C_sim.so
    python tools/simt_build.py --sanitize thread      # build/cuda-sim/thread/shc_kernels/_C_sim.so
    python tools/simt_build.py --sanitize address     # ASan + UBSan, same layout
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "csrc" / "simt" / "sim_module.cpp"
SANITIZE = {
    "thread": ["-fsanitize=thread", "-Wno-tsan"],  # -Wtsan: fences are not modelled (README)
    "address": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"],
}


def cuda_include() -> str:
    """cuda_fp16.h / cuda_bf16.h (host-usable): the toolkit's, else the pip CUDA headers a CUDA torch
    installs (where they are complete)."""
    import importlib.util

    cands = [Path(h) / "include" for h in (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if h]
    spec = importlib.util.find_spec("nvidia")
    for base in list(spec.submodule_search_locations or []) if spec else []:
        cands += [Path(base) / sub / "include" for sub in ("cu13", "cu12", "cuda_runtime")]
    for inc in cands:
        if (inc / "cuda_fp16.h").exists() and (inc / "crt" / "host_defines.h").exists():
            return str(inc)
    sys.exit("cuda-sim: cuda_fp16.h not found (needs a CUDA build of torch or a CUDA toolkit)")


def output_path(sanitize: str | None) -> Path:
    if sanitize is None:
        return ROOT / "shc_kernels" / "_C_sim.so"
    return ROOT / "build" / "cuda-sim" / sanitize / "shc_kernels" / "_C_sim.so"


def command(out: Path, dep: Path, sanitize: str | None) -> list[str]:
    import torch
    from torch.utils import cpp_extension

    incs = [str(ROOT / "csrc" / "simt")]  # first: its mma.h shadows the toolkit's
    incs += cpp_extension.include_paths() + [sysconfig.get_paths()["include"], cuda_include()]
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [os.environ.get("CXX", "c++"), "-std=c++20", "-O1", "-fPIC", "-shared", "-DSHC_SIMT",
           f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function",
           "-MMD", "-MF", str(dep)]  # fmt: skip
    cmd += SANITIZE.get(sanitize, [])
    cmd += [f"-I{i}" for i in incs]
    cmd += [
        str(SRC),
        "-o",
        str(out),
        f"-L{libdir}",
        "-lc10",
        "-ltorch_cpu",
        "-ltorch",
        f"-Wl,-rpath,{libdir}",
    ]
    return cmd


def up_to_date(out: Path, dep: Path, cmd: list[str], stamp: Path) -> bool:
    if not (out.exists() and dep.exists() and stamp.exists()) or stamp.read_text() != shlex.join(cmd):
        return False
    text = dep.read_text().replace("\\\n", " ")
    deps = text.split(":", 1)[1].split() if ":" in text else []
    built = out.stat().st_mtime
    return all(os.path.exists(d) and os.path.getmtime(d) <= built for d in deps)


def build(sanitize: str | None = None, force: bool = False) -> Path:
    out = output_path(sanitize)
    work = ROOT / "build" / "cuda-sim" / (sanitize or "plain")
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    dep, stamp = work / "sim_module.d", work / "command.txt"
    cmd = command(out, dep, sanitize)
    if not force and up_to_date(out, dep, cmd, stamp):
        print(f"cuda-sim: {out.relative_to(ROOT)} is up to date")
        return out
    start = time.time()
    tmp = out.with_suffix(".tmp.so")
    cmd_tmp = cmd[: cmd.index("-o") + 1] + [str(tmp)] + cmd[cmd.index("-o") + 2 :]
    proc = subprocess.run(cmd_tmp, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"cuda-sim: build failed: {shlex.join(cmd_tmp)}")
    os.replace(tmp, out)  # atomic: a running test keeps the old file
    stamp.write_text(shlex.join(cmd))
    print(f"cuda-sim: built {out.relative_to(ROOT)} in {time.time() - start:.0f}s")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sanitize", choices=sorted(SANITIZE), help="build a sanitizer variant under build/cuda-sim/"
    )
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    a = p.parse_args(argv)
    build(a.sanitize, a.force)


if __name__ == "__main__":
    main()
