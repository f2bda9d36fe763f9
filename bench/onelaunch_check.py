"""On a GPU: the Triton one-launch forward (shc_kernels/triton/onelaunch.py) against the separate
launches (layer.separate_forward): the same outputs, and both timed, at ResNet-50's 3x3 shapes
(bf16, channels_last), with the one the layer picks (layer.use_one_launch), so the first GPU shows
whether that pick is the faster one. Run by bench/gpu_check.sh under a timeout: the kernel's items
wait on each other through flags, so a hang there is a failure this check must show.

    python bench/onelaunch_check.py [--batch 256] [--markdown out.md]

Nothing here has run yet: no GPU was available where it was written.
"""

from __future__ import annotations

import argparse
import functools
import sys

import torch


def _separate(x, w, f1w, f1b, f2w, f2b, conf):
    from shc_kernels.triton import layer

    return layer.separate_forward(x, w, None, f1w, f1b, f2w, f2b, *conf, 1e-5)


def _one(x, w, f1w, f1b, f2w, f2b, conf):
    from shc_kernels.triton import onelaunch

    return onelaunch.layer_forward(x, w, None, f1w, f1b, f2w, f2b, *conf, 1e-5)


def _device_name(dev: str) -> str:
    return torch.cuda.get_device_name() if dev == "cuda" else "CPU, Triton interpreter, --smoke: not timed"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--markdown")
    ap.add_argument(
        "--smoke", action="store_true", help="CPU tensors under TRITON_INTERPRET=1, small shapes, no timing"
    )
    args = ap.parse_args(argv)
    dev = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        print("onelaunch_check: no CUDA device", file=sys.stderr)
        return 1
    import triton.testing

    shapes = [(64, 56, 1), (128, 56, 2), (128, 28, 1), (256, 28, 2), (256, 14, 1), (512, 14, 2), (512, 7, 1)]
    dt = torch.bfloat16
    if args.smoke:  # the interpreter has no bf16
        shapes, dt, args.batch = [(32, 5, 1), (32, 6, 2)], torch.float16, 20
    rows, bad = [], 0
    for d, h, s in shapes:
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(args.batch, d, h, h, device=dev, generator=g).to(dt)
        x = x.contiguous(memory_format=torch.channels_last)
        w = (torch.randn(d, d, 3, 3, device=dev, generator=g) * 0.05).to(dt)
        f1w = torch.randn(d // 2, 2 * d, device=dev, generator=g) * 0.1
        f1b = torch.rand(d // 2, device=dev, generator=g) + 0.5
        f2w = torch.randn(9, d // 2, device=dev, generator=g) * 0.1
        f2b = torch.zeros(9, device=dev)
        conf = ((s, s), (1, 1), (1, 1), 1)

        inputs = (x, w, f1w, f1b, f2w, f2b, conf)
        separate, one = functools.partial(_separate, *inputs), functools.partial(_one, *inputs)
        ref, got = separate(), one()
        errs = [float((a.double() - b.double()).abs().max()) for a, b in zip(got, ref, strict=True)]
        ok = errs[0] <= 0.05 * float(ref[0].float().abs().max()) and max(errs[1:]) <= 1e-3
        bad += not ok
        t_sep = float("nan") if args.smoke else triton.testing.do_bench(separate)
        t_one = float("nan") if args.smoke else triton.testing.do_bench(one)
        from shc_kernels.triton import layer

        picked = "one launch" if layer.use_one_launch(x, w, *conf) else "separate"
        rows.append((f"{d}@{h}" + (f"/{s}" if s > 1 else ""), t_sep * 1e3, t_one * 1e3, errs, ok, picked))
        verdict = "ok" if ok else "MISMATCH"
        print(f"{rows[-1][0]:9} separate {t_sep * 1e3:8.1f} us  one launch {t_one * 1e3:8.1f} us  "
              f"max errors y/m/mu/sigma/h {', '.join(f'{e:.2e}' for e in errs)}  {verdict}  "
              f"(the layer runs: {picked})")  # fmt: skip
    if args.markdown:
        lines = [
            f"# One-launch forward against separate launches ({_device_name(dev)})",
            "",
            f"`python bench/onelaunch_check.py --batch {args.batch}`; {str(dt).removeprefix('torch.')}, "
            "channels_last; times measured with triton.testing.do_bench.",
            "",
            "| shape | separate us | one launch us | one / separate | outputs match | the layer runs |",
            "|---|---|---|---|---|---|",
        ]
        for n, a, b, _e, ok, picked in rows:
            lines.append(f"| {n} | {a:.1f} | {b:.1f} | {b / a:.2f} | {'yes' if ok else 'NO'} | {picked} |")
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
