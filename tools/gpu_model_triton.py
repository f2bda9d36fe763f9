"""The Triton kernels exactly as the runtime would launch them, compiled ahead of time.

The package's own launchers (shc_kernels/triton/conv.py, stats.py) are called with tensors on the
``meta`` device while every Triton kernel in those modules is replaced by a recorder: each launch
is captured with its real arguments (the integers the runtime passes for that shape, tensors as
pointers of their dtype) and its grid. Triton's own binder (``create_function_from_signature``,
``JITFunction._pack_args``) then turns the arguments into the signature, constexprs and
attributes that ``triton.jit`` would compile at run time: integers equal to 1 become constexprs
and integers divisible by 16 carry ``tt.divisibility=16`` (as do 16-byte aligned pointers, which
every fresh CUDA tensor is). So the PTX and SASS read here are those of the kernel that runs.

Used by tools/triton_aot_check.py (`make triton-check`) and tools/gpu_model.py (`make gpu-model`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# {key}.json (compile facts), .cubin, .ptx; keys hash the kernel's source and specialisation, so
# checkouts may share one cache (SHC_GPU_MODEL_CACHE)
CACHE = Path(os.environ.get("SHC_GPU_MODEL_CACHE") or ROOT / "build" / "gpu-model" / "triton-v2")

# ResNet-50 (torchvision, v1.5: the stride on the 3x3) 3x3 convolutions: (name, D=C, H=W in, stride).
RESNET50_3X3 = [
    ("64@56", 64, 56, 1),
    ("128@56/2", 128, 56, 2),
    ("128@28", 128, 28, 1),
    ("256@28/2", 256, 28, 2),
    ("256@14", 256, 14, 1),
    ("512@14/2", 512, 14, 2),
    ("512@7", 512, 7, 1),
]
DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class Launch:
    module: str  # "conv" or "stats"
    attr: str  # the kernel's name in that module
    args: tuple
    kwargs: dict
    grid: object
    configs: list = field(default_factory=list)  # autotune configs left after the launcher's pruning

    @property
    def name(self) -> str:
        return self.attr.strip("_").removesuffix("_kernel")

    def fn(self):
        k = getattr(_modules()[self.module], self.attr)
        return k.fn if hasattr(k, "configs") else k

    def grid_blocks(self, config=None) -> int:
        g = self.grid
        if callable(g):
            g = g(dict(self.named_args(), **(config.kwargs if config else {})))
        g = tuple(g) + (1,) * (3 - len(g))
        return int(g[0]) * int(g[1]) * int(g[2])

    def named_args(self) -> dict:
        return dict(zip(self.fn().arg_names, self.args, strict=False))

    def __getstate__(self):  # for a worker process: the grid is a closure, tensors only need a dtype
        import torch

        state = dict(self.__dict__, grid=None)
        state["args"] = tuple(_Ptr(a.dtype) if isinstance(a, torch.Tensor) else a for a in self.args)
        return state


class _Ptr:
    """A tensor argument reduced to what specialisation reads: its dtype."""

    def __init__(self, dtype):
        self.dtype = dtype


def _modules():
    from shc_kernels.triton import conv, onelaunch, stats

    return {"conv": conv, "stats": stats, "onelaunch": onelaunch}


class _Recorder:
    def __init__(self, module, attr, kernel, out):
        self.module, self.attr, self.kernel, self.out = module, attr, kernel, out

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            configs = []
            if hasattr(self.kernel, "configs"):
                configs = list(self.kernel.configs)
                prune = self.kernel.early_config_prune
                if prune:
                    configs = prune(
                        configs, dict(zip(self.kernel.fn.arg_names, args, strict=False)), **kwargs
                    )
            self.out.append(Launch(self.module, self.attr, args, kwargs, grid, configs))

        return call


@contextlib.contextmanager
def recording(sms: int = 132, l2_bytes: int = 50 * 2**20):
    """Within the block, the launchers record their launches instead of running them; the dW
    split, the statistics chunks and the one-launch forward's windows are computed for a GPU of
    ``sms`` SMs and ``l2_bytes`` of L2 (the runtime asks the device)."""
    import triton

    mods = _modules()
    out: list[Launch] = []
    saved = []
    for mname, mod in mods.items():
        for attr, val in list(vars(mod).items()):
            if isinstance(val, (triton.runtime.jit.JITFunction, triton.runtime.autotuner.Autotuner)):
                saved.append((mod, attr, val))
                setattr(mod, attr, _Recorder(mname, attr, val, out))
    # The launchers size their grids by the GPU's SM count (dW split, statistics chunks): their
    # split helpers, whose last argument is the device, see a CUDA device of `sms` SMs.
    for mod in mods.values():
        for name in ("_dw_split", "_split", "window_samples"):
            split = getattr(mod, name, None)
            if split is None:
                continue
            saved.append((mod, name, split))

            def fake_split(*args, _split=split, _sms=sms, _l2=l2_bytes):
                import torch

                class _P:
                    multi_processor_count = _sms
                    L2_cache_size = _l2

                real = torch.cuda.get_device_properties
                torch.cuda.get_device_properties = lambda d: _P()
                try:
                    return _split(*args[:-1], torch.device("cuda"))
                finally:
                    torch.cuda.get_device_properties = real

            setattr(mod, name, fake_split)
    try:
        yield out
    finally:
        for mod, attr, val in saved:
            setattr(mod, attr, val)


def layer_tensors(d, c, h, stride, batch, dtype="bf16", layout="cl", k=3):
    """x, weight, m, dy, hypernetwork tensors on the meta device for one layer (padding k//2)."""
    import torch

    dt = getattr(torch, DTYPE_NAMES[dtype])
    fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
    pad = k // 2
    oh = (h + 2 * pad - k) // stride + 1
    x = torch.empty(batch, d, h, h, device="meta", dtype=dt).contiguous(memory_format=fmt)
    w = torch.empty(c, d, k, k, device="meta", dtype=dt)
    m = torch.empty(batch, k, k, device="meta")
    dy = torch.empty(batch, c, oh, oh, device="meta", dtype=dt).contiguous(memory_format=fmt)
    hid = max(1, d // 2)
    f1w, f1b = torch.empty(hid, 2 * d, device="meta"), torch.empty(hid, device="meta")
    f2w, f2b = torch.empty(k * k, hid, device="meta"), torch.empty(k * k, device="meta")
    return dict(
        x=x, w=w, m=m, dy=dy, f1w=f1w, f1b=f1b, f2w=f2w, f2b=f2b, conf=((stride,) * 2, (pad,) * 2, (1, 1), 1)
    )


def layer_launches(
    d, c, h, stride, batch, dtype="bf16", layout="cl", sms=132, bias=True, need=(True, True, True)
):
    """Every Triton launch of one SHC layer's forward and backward, in order."""
    import torch

    mods = _modules()
    conv, stats = mods["conv"], mods["stats"]
    t = layer_tensors(d, c, h, stride, batch, dtype, layout)
    x, w, m = t["x"], t["w"], t["m"]
    with recording(sms) as got:
        stats.stats_map_forward(
            x, t["f1w"], t["f1b"] if bias else None, t["f2w"], t["f2b"] if bias else None, 3, 3, 1e-5
        )
        conv.conv_forward(x, w, m, torch.empty(c, device="meta", dtype=x.dtype) if bias else None, *t["conf"])
        conv.conv_backward(t["dy"], x, w, m, *t["conf"], *need)
        n = x.shape[0]
        mu = torch.empty(n, d, device="meta")
        hh = torch.empty(n, t["f1w"].shape[0], device="meta")
        stats.stats_map_backward(m.clone(), x, t["f1w"], t["f2w"], m, mu, mu, hh, need[0])
    return got


# ------------------------------------------------------------------------------- specialisation
def specialize(launch: Launch, config, arch: int):
    """(signature, constexprs, attrs, options) as triton.jit computes them for this launch."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import MockTensor, create_function_from_signature

    fn = launch.fn()
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    args = [MockTensor(a.dtype) if isinstance(a, (torch.Tensor, _Ptr)) else a for a in launch.args]
    kwargs = dict(launch.kwargs)
    if config is not None:
        kwargs.update(config.all_kwargs())
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    return signature, constexprs, attrs, options


def job_key(launch: Launch, config, arch: int) -> str:
    import triton

    sig, cx, attrs, opts = specialize(launch, config, arch)
    fn = launch.fn()
    blob = repr(
        (
            fn.cache_key,  # the kernel's source and every @triton.jit function it calls
            sig,
            sorted(cx.items()),
            sorted(attrs.items()),
            sorted(opts.__dict__.items()),
            arch,
            triton.__version__,
        )
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _ptx_facts(ptx: str) -> dict:
    return dict(
        wgmma="wgmma.mma_async" in ptx,
        mma_sync="mma.sync" in ptx,
        cp_async="cp.async" in ptx,
        tma="cp.async.bulk.tensor" in ptx,
        ld_global_v4=("ld.global.v4" in ptx) or ("ld.global.nc.v4" in ptx),
        atom_relaxed=("red.relaxed" in ptx) or ("atom.relaxed" in ptx) or ("red.global.gpu.relaxed" in ptx),
        atom_acq_rel=("acq_rel" in ptx),
        # the one-launch forward's synchronisation (onelaunch.py): counts, not just presence
        atom_relaxed_count=len(re.findall(r"\b(?:atom|red)\.global\.gpu\.relaxed\.", ptx)),
        release_atomics=len(re.findall(r"\b(?:atom|red)\.global\.gpu\.release\.", ptx)),
        acquire_loads=len(re.findall(r"\bld\.global\.gpu\.acquire\.", ptx)),
    )


_ANALYSED: dict[str, dict] = {}


def _analyse(key: str, meta: dict) -> dict:
    """The compile's facts from its cached cubin and PTX: re-read on every run, so a change to the
    SASS analysis (gpu_model_sass.py) never needs a recompile."""
    from gpu_model_sass import resource_usage_cubin, sass_of_cubin, summarize

    if key in _ANALYSED:
        return _ANALYSED[key]
    cubin = (CACHE / f"{key}.cubin").read_bytes()
    ptx = (CACHE / f"{key}.ptx").read_text()
    res = resource_usage_cubin(cubin)
    funcs = sass_of_cubin(cubin)
    if len(funcs) != 1:
        raise RuntimeError(f"expected one function in the cubin of {key}, found {len(funcs)}")
    out = dict(
        meta,
        regs=res["regs"],
        local=res["local"],
        stack=res["stack"],
        static_shared=res["shared"],
        ptx=_ptx_facts(ptx),
        sass=summarize(funcs[0]),
    )
    _ANALYSED[key] = out
    return out


def compile_one(job) -> dict:
    """Compile one (launch, config, arch); the cubin and PTX are cached on disk by the
    specialisation's hash, the analysis is redone from them."""
    launch, config, arch = job
    key = job_key(launch, config, arch)
    path = CACHE / f"{key}.json"
    if path.exists():
        meta = json.loads(path.read_text())
        return _analyse(key, meta) if meta.get("ok") else meta
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, cx, attrs, opts = specialize(launch, config, arch)
    t0 = time.time()
    try:
        k = triton.compile(
            ASTSource(launch.fn(), sig, cx, attrs), target=GPUTarget("cuda", arch, 32), options=opts.__dict__
        )
    except Exception as exc:  # reported, not raised: the caller counts failures
        return dict(key=key, ok=False, error=f"{type(exc).__name__}: {str(exc).strip()[:300]}")
    names = launch.fn().arg_names
    meta = dict(
        key=key,
        ok=True,
        seconds=round(time.time() - t0, 2),
        arch=arch,
        num_warps=opts.num_warps,
        num_stages=opts.num_stages,
        shared=int(k.metadata.shared),
        divisible_ints=sorted(names[i] for (i,), a in attrs.items() if a and sig[names[i]].startswith("i")),
        divisible_ptrs=sorted(names[i] for (i,), a in attrs.items() if a and sig[names[i]].startswith("*")),
        unit_constexprs=sorted(
            names[i]
            for (i,), v in cx.items()
            if v == 1 and sig[names[i]] == "constexpr" and not names[i].isupper()
        ),
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"{key}.cubin").write_bytes(k.asm["cubin"])
    (CACHE / f"{key}.ptx").write_text(k.asm["ptx"])
    path.write_text(json.dumps(meta))  # last: its presence marks a complete entry
    return _analyse(key, meta)


def _worker_init():
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    sys.path.insert(0, str(ROOT))
    os.environ.pop("TRITON_INTERPRET", None)


def compile_many(jobs, processes: int | None = None) -> list[dict]:
    """compile_one over jobs: each distinct specialisation once, compiled (or read from the cache)
    and analysed in parallel."""
    from concurrent.futures import ProcessPoolExecutor

    processes = processes or min(os.cpu_count() or 1, 8)
    keys = [job_key(*j) for j in jobs]
    first: dict[str, tuple] = {}
    for k, j in zip(keys, jobs, strict=True):
        first.setdefault(k, j)
    unique = list(first.values())
    if len(unique) <= 1 or processes <= 1:
        results = [compile_one(j) for j in unique]
    else:
        pickle.dumps(unique[0])  # fail here, not in a worker, if a job cannot be sent
        with ProcessPoolExecutor(max_workers=processes, initializer=_worker_init) as pool:
            results = list(pool.map(compile_one, unique))
    by_key = dict(zip(first, results, strict=True))
    return [by_key[k] for k in keys]
