"""Reading compiled GPU code without a GPU: SASS (cuobjdump, shipped in the triton package),
resource usage, occupancy from published per-SM limits, and the main loop's instruction mix.

Used by tools/gpu_model.py (`make gpu-model`) and its tests. Everything here is evidence read
from the compiled code; none of it is a timing.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

# Published per-SM limits (CUDA C++ Programming Guide, "Compute capabilities"; NVIDIA A100 and H100
# architecture whitepapers). smem_sm: shared memory per SM available to blocks; smem_block: the most
# one block may use; 1 KiB per block is reserved by the system on sm_80 and later.
GPUS = {
    "A100": dict(
        arch=80,
        sms=108,
        regs_sm=65536,
        threads_sm=2048,
        blocks_sm=32,
        smem_sm=164 * 1024,
        smem_block=163 * 1024,
        smem_reserved=1024,
        reg_unit=256,
        clock_ghz=1.41,
        bf16_tflops=312.0,
        fp32_tflops=19.5,
        tf32_tflops=156.0,
        hbm_tbs=2.039,
        l2_mb=40,
    ),
    "H100": dict(
        arch=90,
        sms=132,
        regs_sm=65536,
        threads_sm=2048,
        blocks_sm=32,
        smem_sm=228 * 1024,
        smem_block=227 * 1024,
        smem_reserved=1024,
        reg_unit=256,
        clock_ghz=1.83,
        bf16_tflops=989.0,
        fp32_tflops=67.0,
        tf32_tflops=494.0,
        hbm_tbs=3.35,
        l2_mb=50,
    ),
}


def tool(name: str) -> str:
    """Path of cuobjdump / nvdisasm from the triton package (a CUDA toolkit's as a fallback)."""
    import triton

    here = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if os.path.exists(here):
        return here
    for d in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        p = os.path.join(d, "bin", name)
        if d and os.path.exists(p):
            return p
    raise FileNotFoundError(f"{name} not found (neither in the triton package nor a CUDA toolkit)")


# ------------------------------------------------------------------------------------------ SASS
_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_FUNC = re.compile(r"^\s*Function\s*:\s*(\S+)")
_ARCH = re.compile(r"code for (sm_\d+)")


@dataclass
class Instr:
    addr: int
    pred: str
    op: str  # full opcode with modifiers, e.g. LDG.E.128
    args: str

    @property
    def base(self) -> str:
        return self.op.split(".")[0]


@dataclass
class Function:
    name: str
    arch: str
    instrs: list[Instr] = field(default_factory=list)


def parse_sass(text: str) -> list[Function]:
    """cuobjdump -sass output -> functions with their instructions."""
    funcs: list[Function] = []
    arch = "?"
    cur = None
    for line in text.splitlines():
        m = _ARCH.search(line)
        if m:
            arch = m.group(1)
            continue
        m = _FUNC.match(line)
        if m:
            cur = Function(m.group(1), arch)
            funcs.append(cur)
            continue
        m = _LINE.match(line)
        if m and cur is not None:
            body = m.group(2).strip()
            pred = ""
            if body.startswith("@"):
                pred, _, body = body.partition(" ")
                body = body.strip()
            op, _, args = body.partition(" ")
            cur.instrs.append(Instr(int(m.group(1), 16), pred, op, args.strip()))
    return funcs


def sass_of(path: str, arch: str | None = None) -> list[Function]:
    cmd = [tool("cuobjdump"), "-sass"]
    if arch:
        cmd += ["-arch", arch]
    out = subprocess.run(cmd + [path], capture_output=True, text=True, check=True).stdout
    return parse_sass(out)


def sass_of_cubin(cubin: bytes) -> list[Function]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return sass_of(f.name)


_RES = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(path: str, arch: str | None = None) -> dict[tuple[str, str], dict]:
    """(arch, mangled name) -> {regs, stack, shared (static bytes), local}."""
    cmd = [tool("cuobjdump"), "-res-usage"]
    if arch:
        cmd += ["-arch", arch]
    out = subprocess.run(cmd + [path], capture_output=True, text=True, check=True).stdout
    res = {}
    cur_arch = "?"
    for chunk in re.split(r"(?=Resource usage:)", out):
        m = re.search(r"arch = (sm_\d+)", chunk)
        if m:
            cur_arch = m.group(1)
        for m in _RES.finditer(chunk):
            res[(cur_arch, m.group(1))] = dict(
                regs=int(m.group(2)), stack=int(m.group(3)), shared=int(m.group(4)), local=int(m.group(5))
            )
    return res


def resource_usage_cubin(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        got = resource_usage(f.name)
    assert len(got) == 1, got
    return next(iter(got.values()))


# MMA work per instruction, in m16n8k16 equivalents per warp (2048 MACs): the unit of "instructions
# per MMA". HGMMA is issued by each of the 4 warps of a warpgroup for one 64xNxK tile.
def mma_equiv(ins: Instr) -> float:
    op = ins.op
    if op.startswith("HGMMA."):
        m = re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)", op)
        if m:
            mm, nn, kk = map(int, m.groups())
            return mm * nn * kk / 4 / 2048
        return 0.0
    if op.startswith("HMMA."):
        shape = op.split(".")[1]  # 16816: m16n8k16; 1688: m16n8k8; 884: m8n8k4
        dims = {"16816": (16, 8, 16), "1688": (16, 8, 8), "1684": (16, 8, 4), "884": (8, 8, 4)}.get(shape)
        return (dims[0] * dims[1] * dims[2] / 2048) if dims else 1.0
    return 0.0


GLOBAL_LOADS = ("LDG", "LD")  # LD: generic address space (not known to be global)


def width_bits(op: str) -> int:
    for mod in op.split(".")[1:]:
        if mod in ("128", "64"):
            return int(mod)
        if mod in ("U8", "S8"):
            return 8
        if mod in ("U16", "S16"):
            return 16
    return 32


def _hgmma_a_is_register(ins: Instr) -> bool:
    ops = [a.strip() for a in ins.args.split(",")]
    return len(ops) > 1 and re.fullmatch(r"R\d+", ops[1]) is not None


def mix(instrs: list[Instr]) -> dict:
    """Instruction mix of a piece of code (a loop body or a whole function)."""
    counts: dict[str, int] = {}
    for ins in instrs:
        counts[ins.base] = counts.get(ins.base, 0) + 1
    mma = sum(mma_equiv(i) for i in instrs)
    loads = [i for i in instrs if i.base in GLOBAL_LOADS + ("LDGSTS",)]
    ffma = counts.get("FFMA", 0)
    dfma = counts.get("DFMA", 0)
    out = dict(
        instructions=len(instrs),
        hmma=counts.get("HMMA", 0),
        hgmma=counts.get("HGMMA", 0),
        mma_equiv=round(mma, 2),
        ffma=ffma,
        dfma=dfma,
        ldsm=counts.get("LDSM", 0),
        lds=counts.get("LDS", 0),
        sts=counts.get("STS", 0),
        ldg=counts.get("LDG", 0),
        ld_generic=counts.get("LD", 0),
        ldgsts=counts.get("LDGSTS", 0),
        tma=counts.get("UTMALDG", 0),
        movm=counts.get("MOVM", 0),
        bar=counts.get("BAR", 0),
        membar=counts.get("MEMBAR", 0),
        cctl=counts.get("CCTL", 0),
        red=counts.get("RED", 0) + counts.get("REDG", 0),
        atom=counts.get("ATOM", 0) + counts.get("ATOMG", 0),
        ldl=counts.get("LDL", 0),
        stl=counts.get("STL", 0),
        global_load_bits=sorted({width_bits(i.op) for i in loads}),
        global_load_ops=[i.op for i in instrs if i.base in ("LDG", "LD", "LDGSTS")],
        membar_ops=sorted({i.op for i in instrs if i.base == "MEMBAR"}),
        # operands changed in registers on their way to the tensor cores: wgmma reading A from
        # registers (HGMMA Rd, Ra, gdesc[...]) rather than both operands from shared memory, and
        # fp32 -> 16-bit packs (F2FP)
        hgmma_a_in_registers=sum(1 for i in instrs if i.base == "HGMMA" and _hgmma_a_is_register(i)),
        f2fp=counts.get("F2FP", 0),
    )
    out["instr_per_mma"] = round(len(instrs) / mma, 2) if mma else None
    return out


def loops(fn: Function) -> list[tuple[int, int]]:
    """(start index, end index) of every backward branch's body."""
    index = {ins.addr: k for k, ins in enumerate(fn.instrs)}
    found = []
    for k, ins in enumerate(fn.instrs):
        if ins.base == "BRA":
            m = re.search(r"0x([0-9a-f]+)", ins.args)
            if m:
                tgt = int(m.group(1), 16)
                if tgt <= ins.addr and tgt in index and index[tgt] < k:
                    found.append((index[tgt], k))
    return found


def main_loop(fn: Function) -> list[Instr]:
    """The innermost loop doing the most MMA work (tensor-core or FMA); the whole function when
    it has no loop with any."""

    def work(seg):
        return sum(mma_equiv(i) for i in seg) or sum(i.base in ("FFMA", "DFMA") for i in seg) / 64

    best, best_key = None, None
    for a, b in loops(fn):
        seg = fn.instrs[a : b + 1]
        w = work(seg)
        if w <= 0:
            continue
        key = (w, -len(seg))
        if best_key is None or key > best_key:
            best, best_key = seg, key
    return best if best is not None else fn.instrs


def conditional_instructions(seg: list[Instr]) -> int:
    """Instructions of a loop body that a forward branch inside the body can skip: the regions of an
    `if` the compiler left as a branch (e.g. a flattened loop nest's per-outer-iteration setup and
    epilogue). How often they run is not in the SASS; the caller weighs them (tools/gpu_model.py)."""
    return len(_conditional_indices(seg))


def _conditional_indices(seg: list[Instr]) -> set[int]:
    if not seg:
        return set()
    index = {ins.addr: k for k, ins in enumerate(seg)}
    skipped = set()
    for k, ins in enumerate(seg[:-1]):  # the last instruction is the loop's back edge
        if ins.base != "BRA":
            continue
        m = re.search(r"0x([0-9a-f]+)", ins.args)
        if not m:
            continue
        tgt = int(m.group(1), 16)
        if tgt > ins.addr and tgt in index:
            skipped.update(range(k + 1, index[tgt]))
    return skipped


def barrier_beside_atomics(fn: Function, window: int = 3) -> int:
    """Atomics (RED/ATOM) with a MEMBAR or CCTL within `window` instructions: what an
    acquire-release atomic compiles to."""
    n = 0
    ins = fn.instrs
    for k, i in enumerate(ins):
        if i.base in ("RED", "REDG", "ATOM", "ATOMG"):
            near = ins[max(0, k - window) : k + window + 1]
            n += any(j.base in ("MEMBAR", "CCTL") for j in near)
    return n


def summarize(fn: Function) -> dict:
    loop = main_loop(fn)
    ml = mix(loop)
    cond = _conditional_indices(loop) if loop is not fn.instrs else set()
    ml["conditional"] = len(cond)
    # the path every iteration takes (the conditional regions left out), its main counts
    every = mix([i for k, i in enumerate(loop) if k not in cond])
    keep = ("instructions", "mma_equiv", "sts", "f2fp", "hgmma_a_in_registers", "ldg", "ld_generic", "ldgsts")
    ml["every_iteration"] = {k: every[k] for k in keep}
    ml["every_iteration"]["sync_load_ops"] = [
        op for op in every["global_load_ops"] if op.split(".")[0] != "LDGSTS"
    ]
    return dict(
        main_loop=ml,
        whole=mix(fn.instrs),
        atomics_with_barrier=barrier_beside_atomics(fn),
    )


# ------------------------------------------------------------------------------------- occupancy
def occupancy(gpu: str, regs: int, threads: int, smem: int) -> dict:
    """Blocks per SM and the limiting resource, from registers, shared memory and threads.
    smem: bytes a block uses (static + dynamic), without the system's reserved KiB."""
    g = GPUS[gpu]
    warps = math.ceil(threads / 32)
    regs_warp = math.ceil(max(regs, 1) * 32 / g["reg_unit"]) * g["reg_unit"]
    by = {
        "blocks": g["blocks_sm"],
        "threads": g["threads_sm"] // threads,
        "registers": (g["regs_sm"] // regs_warp) // warps,
        "shared": g["smem_sm"] // (smem + g["smem_reserved"]) if smem + g["smem_reserved"] > 0 else 99,
    }
    blocks = min(by.values())
    limit = min(by, key=lambda k: by[k])
    return dict(
        blocks_per_sm=blocks,
        limited_by=limit,
        warps_per_sm=blocks * warps,
        occupancy=round(blocks * warps / (g["threads_sm"] // 32), 3),
        fits=smem <= g["smem_block"] and blocks > 0,
    )


def waves(gpu: str, grid_blocks: int, blocks_per_sm: int) -> dict:
    """Wave quantisation of a grid. `waves`: rounds of all SMs' block slots; `efficiency`: the
    average SM's share of the blocks over the busiest SM's (ceil(grid / SMs)), what a
    throughput-bound kernel loses to the tail (a grid of fewer blocks than slots spreads one per
    SM; more resident blocks per SM share its throughput rather than finish sooner)."""
    sms = GPUS[gpu]["sms"]
    slots = max(blocks_per_sm, 1) * sms
    n = math.ceil(grid_blocks / slots) if grid_blocks else 0
    busiest = math.ceil(grid_blocks / sms) if grid_blocks else 0
    eff = round(grid_blocks / (busiest * sms), 3) if busiest else 1.0
    return dict(grid=grid_blocks, slots=slots, waves=n, efficiency=eff)
