"""What each unit of ``shc study`` computes (the scheduling, storage and resuming are study.py's).

A unit is one (stage, model, parameter) and returns a small json-able dict. Every per-image
result is kept as a bit string (``bits``: 1 = the model still classifies that image correctly),
so the paired statistics of the report (McNemar, bootstrap) can be recomputed from the committed
units alone. The images are the first ``images`` images of the test set, the same for every model.
The sources of this module, advtrain.py, attacks/ and models/ are hashed into every unit's key.
"""

from __future__ import annotations

import math

import torch

from .. import functional
from ..modules import SHCConv2d, convert
from . import attacks
from .attacks import robust

__all__ = ["STAGES", "bits", "unbits", "run_stage"]


def bits(mask: torch.Tensor) -> str:
    """A bool vector as a string of '0'/'1' (readable in a diff, 1 KB for 1,000 images)."""
    return "".join("1" if v else "0" for v in mask.tolist())


def unbits(text: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def _acc(mask) -> float:
    return 100.0 * float(mask.float().mean()) if len(mask) else float("nan")


def _entry(mask) -> dict:
    return {"acc": _acc(mask), "bits": bits(mask)}


def _shc(model) -> bool:
    return any(isinstance(m, SHCConv2d) for m in model.modules())


# ---------------------------------------------------------------- stages


def clean(ctx, model, p) -> dict:
    return _entry(robust.correct(model, ctx.x, ctx.y))


def pgd(ctx, model, p) -> dict:
    c = ctx.cfg
    _, ok = robust.pgd(
        model, ctx.x, ctx.y, p["eps"], c["pgd_steps"], restarts=c["pgd_restarts"], seed=ctx.seed
    )
    return _entry(ok) | {"steps": c["pgd_steps"], "restarts": c["pgd_restarts"]}


def minimal_eps(ctx, model, p) -> dict:
    c = ctx.cfg
    e = robust.minimal_eps(
        model, ctx.x, ctx.y, p["eps_max"], steps=c["min_steps"], iters=c["min_iters"], seed=ctx.seed
    )
    return {
        "eps": [None if math.isinf(v) else round(v, 6) for v in e.tolist()],  # None: not fooled at eps_max
        "eps_max": p["eps_max"],
        "resolution": p["eps_max"] / 2 ** c["min_iters"],
        "steps": c["min_steps"],
    }


def paper(ctx, model, p) -> dict:
    """Tables 1, 2, 4 as the paper runs them (least-likely targets), with the budgets they
    really have: RAND+FGSM as eq. (4) prints it moves up to eps + alpha = 0.0625 in L-inf;
    I-FGSM's 5 steps of 0.001 reach at most 0.005; the noise is not truncated."""
    x, y = ctx.x, ctx.y
    out = {}
    gen = torch.Generator().manual_seed(ctx.seed)
    for sigma in (0.1, 0.2, 0.4):
        adv = attacks.gaussian_noise(x, sigma, generator=gen)
        out[f"gaussian sigma={sigma:g}"] = _entry(robust.correct(model, adv, y))
    runs = {
        "FGSM eps=0.02 (L-inf 0.02)": lambda r: attacks.fgsm(model, x, y, 0.02, grad_route=r),
        "FGSM eps=0.1 (L-inf 0.1)": lambda r: attacks.fgsm(model, x, y, 0.1, grad_route=r),
        "I-FGSM 5 x 0.001 (L-inf 0.005)": lambda r: attacks.ifgsm(model, x, y, 0.02, 0.001, 5, grad_route=r),
        "RAND+FGSM eq. (4) (L-inf 0.0625)": lambda r: attacks.rand_fgsm(
            model, x, y, 0.03125, 0.03125, grad_route=r, generator=torch.Generator().manual_seed(ctx.seed)
        ),
    }
    for name, run in runs.items():
        out[name] = _entry(robust.correct(model, run(None), y))
    if _shc(model):  # Table 4: RAND+FGSM through one route only
        for route in ("conv", "hyper"):
            out[f"RAND+FGSM route={route}"] = _entry(robust.correct(model, runs[list(runs)[-1]](route), y))
    return out


def masking(ctx, model, p) -> dict:
    """At an eps where PGD does not reach 0%: FGSM, PGD with few/many steps and restarts, Square
    and the transfer from the other model of the pair, each per image. A sound evaluation has
    PGD-many <= PGD <= FGSM, PGD <= Square, PGD <= transfer (in accuracy)."""
    c, x, y, eps = ctx.cfg, ctx.x, ctx.y, p["eps"]
    fgsm = attacks.fgsm(model, x, y, eps, target=None)
    out = {"FGSM": _entry(robust.correct(model, fgsm, y))}
    for steps, restarts in ((10, 1), (c["pgd_steps"], 1), (c["mask_steps"], c["mask_restarts"])):
        _, ok = robust.pgd(model, x, y, eps, steps, restarts=restarts, seed=ctx.seed)
        out[f"PGD-{steps} x{restarts}"] = _entry(ok)
    _, ok = robust.square(model, x, y, eps, c["square_queries"], seed=ctx.seed)
    out[f"Square {c['square_queries']} queries"] = _entry(ok)
    partner = ctx.partner()
    adv, _ = robust.pgd(partner, x, y, eps, c["pgd_steps"], seed=ctx.seed)
    out["transfer from the pair's other model"] = _entry(robust.correct(model, adv, y))
    big, _ = robust.pgd(model, x, y, c["mask_big_eps"], c["pgd_steps"], seed=ctx.seed)
    out[f"PGD eps={c['mask_big_eps']:g}"] = _entry(robust.correct(model, big, y))
    return out


def adaptive(ctx, model, p) -> dict:
    """The attacks on SHC's mechanism at one eps: maps frozen at the clean input (BPDA), the
    conv route only, and perturbations that keep each channel's mean and std (also run on the
    plain model, as the control of what the constraint alone costs the attacker)."""
    c, x, y, eps = ctx.cfg, ctx.x, ctx.y, p["eps"]
    out = {}
    if _shc(model):
        fwd = robust.frozen_maps_forward(model)
        _, ok = robust.pgd(model, x, y, eps, c["pgd_steps"], seed=ctx.seed, forward=fwd)
        out["PGD, maps frozen at the clean input"] = _entry(ok)
        _, ok = robust.pgd(model, x, y, eps, c["pgd_steps"], seed=ctx.seed, grad_route="conv")
        out["PGD, conv route only"] = _entry(ok)
    adv, ok = robust.pgd(model, x, y, eps, c["pgd_steps"], seed=ctx.seed, project=robust.mean_std_projection)
    dm, ds = robust.channel_stat_gap(adv, x)
    out["PGD keeping channel mean and std"] = _entry(ok) | {"max_mean_gap": dm, "max_std_gap": ds}
    return out


def autoattack(ctx, model, p) -> dict:
    c = ctx.cfg
    n = min(p["images"], len(ctx.y))
    res = robust.autoattack(
        model, ctx.x[:n], ctx.y[:n], p["eps"], ctx.num_classes, seed=ctx.seed,
        apgd_steps=c["aa_steps"], apgdt_steps=c["aa_steps"], fab_steps=c["aa_steps"],
        square_queries=c["aa_queries"],
    )  # fmt: skip
    return {name: _entry(mask) for name, mask in res.items()} | {
        "steps": c["aa_steps"],
        "queries": c["aa_queries"],
    }


def lsa(ctx, model, p) -> dict:
    """LocSearchAdv at 1 pixel a step (the paper's 10 pixels of 256^2 is 0.015% of the image a
    step; one pixel of 28^2 is 0.13%, the nearest possible): correctness after steps 1..steps and
    the pixels flipped at the first misclassification (None: never within ``steps``)."""
    c = ctx.cfg
    n = min(c["lsa_images"], len(ctx.y))
    res = attacks.local_search(
        model, ctx.x[:n], ctx.y[:n], pixels_per_step=1, steps=c["lsa_steps"],
        candidates=c["lsa_candidates"], generator=torch.Generator().manual_seed(ctx.seed),
    )  # fmt: skip
    corr = res.correct  # (steps + 1, n)
    first = []
    for i in range(n):
        wrong = (~corr[:, i]).nonzero()
        first.append(int(wrong[0]) if len(wrong) else None)
    return {
        "steps": c["lsa_steps"],
        "per_step": [bits(corr[s]) for s in range(corr.shape[0])],
        "first_wrong_pixels": first,
    }


@torch.no_grad()
def mechanism(ctx, model, p) -> dict:
    """How much the maps m vary across the images, per SHC layer (a plain model converted: its
    maps are exactly 0.5 by construction, the zero line), and what the variation does: the clean
    accuracy with every map replaced by its mean over the images."""
    import copy

    net = model if _shc(model) else convert(copy.deepcopy(model), kernel_sizes=((3, 3),))
    layers = [(name, m) for name, m in net.named_modules() if isinstance(m, SHCConv2d)]
    seen: dict[str, list] = {name: [] for name, _ in layers}

    def hook(name, layer):
        def run(mod, inputs):
            z = inputs[0]
            seen[name].append(
                functional.statistical_map(z, *layer._hyper_params(), layer.kernel_size, layer.eps)
            )

        return run

    handles = [layer.register_forward_pre_hook(hook(name, layer)) for name, layer in layers]
    try:
        ok = robust.correct(net, ctx.x, ctx.y)
    finally:
        for h in handles:
            h.remove()
    out, means = {}, {}
    for name, _ in layers:
        m = torch.cat(seen[name]).flatten(1)  # (images, kh*kw)
        means[name] = m.mean(0)
        out[name] = {
            "mean": float(m.mean()),
            "std_across_images": float(m.std(0, correction=0).mean()),
            "range_across_images": float((m.max(0).values - m.min(0).values).mean()),
        }
    # The maps held at their mean over the images: does the input-dependence matter?
    mean_maps = {name: means[name] for name, _ in layers}

    def frozen(layer, name):
        def forward(z):
            mm = mean_maps[name].view(1, *layer.kernel_size).expand(len(z), -1, -1).contiguous()
            return functional.modulated_conv2d(
                z, layer.weight, mm, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
            )

        return forward

    for name, layer in layers:
        layer.forward = frozen(layer, name)
    try:
        ok_mean = robust.correct(net, ctx.x, ctx.y)
        with torch.no_grad():
            pred_mean = torch.cat([net(b).argmax(1) for b in ctx.x.split(500)])
    finally:
        for _, layer in layers:
            del layer.forward
    pred = torch.cat([net(b).argmax(1) for b in ctx.x.split(500)])
    return {
        "converted_plain": not _shc(model),
        "layers": out,
        "clean": _entry(ok),
        "maps_at_their_mean": _entry(ok_mean),
        "same_prediction_pct": 100.0 * float((pred == pred_mean).float().mean()),
    }


STAGES = {
    "clean": clean,
    "pgd": pgd,
    "minimal_eps": minimal_eps,
    "paper": paper,
    "masking": masking,
    "adaptive": adaptive,
    "autoattack": autoattack,
    "lsa": lsa,
    "mechanism": mechanism,
}


def run_stage(stage: str, ctx, model, params: dict) -> dict:
    return STAGES[stage](ctx, model, params)
