"""The paper's attacks (§2.3, eqs. (1)–(4)), LocSearchAdv and the RCD score (eq. (5))."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shc_kernels as shc
from shc_kernels.research import attacks

EPS = 0.03


class TinySHC(nn.Module):
    """conv 3->8, SHC 8->8 (4 hidden units, kept alive), pool, linear: 8×8 images, 10 classes."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.shc = shc.SHCConv2d(8, 8, 3, padding=1)
        with torch.no_grad():
            self.shc.hyper.fc1.bias.fill_(1.0)  # every hidden unit active: the hyper route matters
            self.shc.hyper.fc2.weight.mul_(4.0)
        self.fc = nn.Linear(8 * 4, 10)

    def forward(self, x):
        h = F.relu(self.shc(F.relu(self.bn(self.conv(x)))))
        return self.fc(F.adaptive_avg_pool2d(h, 2).flatten(1))


def linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))


def images(n=6, seed=1, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, 3, 8, 8, generator=g)
    return x, torch.randint(0, 10, (n,), generator=g)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ce(model, x, labels):
    with torch.no_grad():
        return F.cross_entropy(model(x), labels, reduction="none")


ALL_ATTACKS = {
    "gaussian": lambda m, x, y: attacks.gaussian_noise(x, 0.2, EPS, generator=gen()),
    "fgsm": lambda m, x, y: attacks.fgsm(m, x, y, EPS),
    "fgsm_untargeted": lambda m, x, y: attacks.fgsm(m, x, y, EPS, target=None),
    "ifgsm": lambda m, x, y: attacks.ifgsm(m, x, y, EPS, 0.01, 5),
    "rand_fgsm_tramer": lambda m, x, y: attacks.rand_fgsm(
        m, x, y, EPS, 0.01, variant="tramer", generator=gen()
    ),
}


# ---------------------------------------------------------------- eps-ball, [0, 1], input, mode


@pytest.mark.parametrize("name", sorted(ALL_ATTACKS))
def test_attack_stays_in_eps_ball_and_unit_range(name):
    model = TinySHC()
    x, y = images()
    adv = ALL_ATTACKS[name](model, x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert not torch.equal(adv, x)


def test_rand_fgsm_paper_variant_changes_at_most_eps_plus_alpha():
    model, (x, y) = TinySHC(), images()
    adv = attacks.rand_fgsm(model, x, y, 0.03125, 0.03125, generator=gen())
    assert (adv - x).abs().max() <= 0.0625 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_rand_fgsm_tramer_variant_needs_alpha_at_most_eps():
    model, (x, y) = TinySHC(), images()
    with pytest.raises(ValueError, match="alpha"):
        attacks.rand_fgsm(model, x, y, 0.01, 0.02, variant="tramer")


def _all_attacks_including_lsa():
    cases = dict(ALL_ATTACKS)
    cases["rand_fgsm"] = lambda m, x, y: attacks.rand_fgsm(m, x, y, EPS, EPS, generator=gen())
    cases["local_search"] = lambda m, x, y: attacks.local_search(m, x, y, 2, 2, candidates=8, generator=gen())
    cases["fgsm_hyper_route"] = lambda m, x, y: attacks.fgsm(m, x, y, EPS, grad_route="hyper")
    return cases


@pytest.mark.parametrize("name", sorted(_all_attacks_including_lsa()))
def test_attack_does_not_modify_input_and_restores_every_module_mode(name):
    model = TinySHC().train()
    model.bn.eval()  # mixed modes must come back as they were, not as model.train()
    x, y = images()
    x_before, y_before = x.clone(), y.clone()
    modes = [m.training for m in model.modules()]
    routes = model.shc.grad_route
    _all_attacks_including_lsa()[name](model, x, y)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert [m.training for m in model.modules()] == modes
    assert model.shc.grad_route == routes
    assert all(p.grad is None for p in model.parameters())


def test_attacks_run_the_model_in_eval_mode():
    model, (x, y) = TinySHC().train(), images()
    seen = []
    model.register_forward_pre_hook(lambda mod, inp: seen.append(mod.training))
    attacks.fgsm(model, x, y, EPS)
    attacks.local_search(model, x, y, 1, 1, candidates=4)
    assert seen and not any(seen)


# ---------------------------------------------------------------- the direction of each step


def test_targeted_fgsm_lowers_the_target_loss_on_a_linear_model():
    model = linear_model()
    x, y = images(lo=0.2, hi=0.8)  # no clipping at 0 or 1: the whole step is taken
    target = torch.randint(0, 10, (len(y),), generator=gen(3))
    adv = attacks.fgsm(model, x, y, 0.01, target=target)
    assert (ce(model, adv, target) < ce(model, x, target)).all()


def test_default_fgsm_targets_the_least_likely_class_of_the_clean_prediction():
    model = linear_model()
    x, y = images(lo=0.2, hi=0.8)
    least = model(x).argmin(1)
    adv = attacks.fgsm(model, x, y, 0.01)
    assert (ce(model, adv, least) < ce(model, x, least)).all()
    torch.testing.assert_close(adv, attacks.fgsm(model, x, y, 0.01, target=least))


def test_untargeted_fgsm_raises_the_true_class_loss():
    model = linear_model()
    x, y = images(lo=0.2, hi=0.8)
    adv = attacks.fgsm(model, x, y, 0.01, target=None)
    assert (ce(model, adv, y) > ce(model, x, y)).all()
    assert torch.allclose((adv - x).abs(), torch.full_like(x, 0.01))


def test_ifgsm_is_projected_after_every_step():
    model = TinySHC()
    x, y = images()
    eps, alpha = 0.02, 0.01  # 5 steps of 0.01 would leave the 0.02-ball without the projection
    previous = x
    for steps in range(1, 6):
        adv = attacks.ifgsm(model, x, y, eps, alpha, steps)
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - previous).abs().max() <= alpha + 1e-6  # one step of alpha at most
        previous = adv
    assert (previous - x).abs().max() >= eps - 1e-6  # the projection was active


def test_ifgsm_lowers_the_target_loss_on_a_linear_model():
    model = linear_model()
    x, y = images(lo=0.2, hi=0.8)
    least = model(x).argmin(1)
    adv = attacks.ifgsm(model, x, y, 0.02, 0.005, 4)
    assert (ce(model, adv, least) < ce(model, x, least)).all()


def test_gaussian_noise_is_truncated_to_eps_and_zero_sigma_is_identity():
    x, _ = images(lo=0.3, hi=0.7)
    adv = attacks.gaussian_noise(x, 1.0, eps=0.05, generator=gen())
    assert (adv - x).abs().max() <= 0.05 + 1e-6
    assert ((adv - x).abs() > 0.049).float().mean() > 0.5  # sigma >> eps: most values truncated
    torch.testing.assert_close(attacks.gaussian_noise(x, 0.0), x)


# ---------------------------------------------------------------- seeds


@pytest.mark.parametrize(
    "attack",
    [
        lambda m, x, y, g: attacks.gaussian_noise(x, 0.1, generator=g),
        lambda m, x, y, g: attacks.rand_fgsm(m, x, y, EPS, EPS, generator=g),
        lambda m, x, y, g: attacks.local_search(m, x, y, 2, 3, candidates=8, generator=g).images,
    ],
    ids=["gaussian", "rand_fgsm", "local_search"],
)
def test_same_generator_seed_gives_the_same_result(attack):
    model, (x, y) = TinySHC(), images()
    a, b = attack(model, x, y, gen(5)), attack(model, x, y, gen(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, attack(model, x, y, gen(6)))


# ---------------------------------------------------------------- gradient routes (Table 4)


def test_grad_route_context_sets_every_shc_layer_and_restores_each():
    model = nn.Sequential(TinySHC(), shc.SHCConv2d(10, 4, 1))
    layers = [m for m in model.modules() if isinstance(m, shc.SHCConv2d)]
    layers[1].grad_route = "conv"
    with attacks.grad_route(model, "hyper"):
        assert [m.grad_route for m in layers] == ["hyper", "hyper"]
    assert [m.grad_route for m in layers] == ["both", "conv"]
    with pytest.raises(RuntimeError), attacks.grad_route(model, "conv"):
        raise RuntimeError("restored even on error")
    assert [m.grad_route for m in layers] == ["both", "conv"]
    with pytest.raises(ValueError, match="grad_route"), attacks.grad_route(model, "weights"):
        pass


def test_hyper_route_fgsm_differs_from_conv_route_fgsm():
    model, (x, y) = TinySHC(), images()
    conv = attacks.fgsm(model, x, y, EPS, grad_route="conv")
    hyper = attacks.fgsm(model, x, y, EPS, grad_route="hyper")
    both = attacks.fgsm(model, x, y, EPS, grad_route="both")
    assert (hyper != x).any() and (conv != x).any()
    assert not torch.equal(conv, hyper)
    torch.testing.assert_close(both, attacks.fgsm(model, x, y, EPS))  # "both" is the default
    assert model.shc.grad_route == "both"


# ---------------------------------------------------------------- LocSearchAdv


def _forbid_backward(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("LocSearchAdv is black-box: it must not back-propagate")

    monkeypatch.setattr(torch.autograd, "backward", fail)
    monkeypatch.setattr(torch.autograd, "grad", fail)
    monkeypatch.setattr(torch.Tensor, "backward", fail)


def test_local_search_never_back_propagates(monkeypatch):
    model, (x, y) = TinySHC(), images()
    outputs = []
    model.register_forward_hook(lambda mod, inp, out: outputs.append(out.requires_grad))
    _forbid_backward(monkeypatch)
    attacks.local_search(model, x, y, pixels_per_step=3, steps=4, candidates=16, generator=gen())
    assert outputs and not any(outputs)  # no graph was even built
    with pytest.raises(AssertionError, match="black-box"):  # the patch is live
        attacks.fgsm(model, x, y, EPS)


def test_local_search_records_every_step_and_best_confidence_never_rises():
    model, (x, y) = TinySHC().eval(), images()
    steps, t = 6, 3
    r = attacks.local_search(model, x, y, pixels_per_step=t, steps=steps, candidates=16, generator=gen())
    n = len(y)
    for key in ("confidence", "best_confidence", "correct", "rcd"):
        assert r[key].shape == (steps + 1, n)
    with torch.no_grad():
        p = F.softmax(model(x).double(), 1)
    torch.testing.assert_close(r.confidence[0], p[torch.arange(n), y])
    assert torch.equal(r.correct[0], p.argmax(1) == y)
    assert torch.equal(r.rcd[0], torch.zeros(n, dtype=r.rcd.dtype))
    assert (r.best_confidence[1:] <= r.best_confidence[:-1]).all()
    torch.testing.assert_close(r.best_confidence, torch.cummin(r.confidence, 0).values)
    # Exactly t new pixels per step, every channel of them, nothing else, all in [0, 1].
    assert (r.perturbed.flatten(1).sum(1) == steps * t).all()
    changed = (r.images != x).any(1)
    assert not (changed & ~r.perturbed).any()
    assert r.images.min() >= 0 and r.images.max() <= 1
    with torch.no_grad():
        p_best = F.softmax(model(r.best_images).double(), 1)[torch.arange(n), y]
    torch.testing.assert_close(p_best, r.best_confidence[-1])


def test_local_search_greedy_step_lowers_the_true_class_on_a_linear_model():
    model = linear_model()
    x, y = images()
    r = attacks.local_search(model, x, y, pixels_per_step=1, steps=5, candidates=64, generator=gen())
    # One pixel per step, the best of all 64: each step can only help.
    assert (r.confidence[1:] <= r.confidence[:-1] + 1e-12).all()
    assert (r.confidence[-1] < r.confidence[0]).all()


def test_local_search_stops_changing_when_every_pixel_is_perturbed():
    model = linear_model()
    x, y = images(n=2)
    calls = []
    model.register_forward_hook(lambda mod, inp, out: calls.append(len(out)))
    # 64 pixels, 30 per step: every pixel is perturbed after 3 steps, so step 4 on repeats step 3.
    steps = 6
    r = attacks.local_search(model, x, y, pixels_per_step=30, steps=steps, candidates=64, generator=gen())
    assert r.perturbed.all()
    assert r.confidence.shape == (steps + 1, 2)
    for key in ("confidence", "best_confidence", "correct", "rcd"):
        assert torch.equal(r[key][3:], r[key][3:4].expand_as(r[key][3:]))
    assert len(calls) == 1 + 3 * 2  # the clean images, then 3 steps of (candidates, the new image)
    with torch.no_grad():
        p = F.softmax(model(r.images).double(), 1)[torch.arange(2), y]
    torch.testing.assert_close(r.confidence[-1], p)


# ---------------------------------------------------------------- RCD, eq. (5)


def test_rcd_on_a_hand_computed_example():
    # Clean p = (0.7, 0.2, 0.1), y = 0: others (0.2, 0.1), mean 0.15, population SD 0.05,
    #   RC = log(0.7 / 0.05) = log 14 = 2.639057.
    # Adversarial p = (0.4, 0.5, 0.1): others (0.5, 0.1), mean 0.3, SD 0.2,
    #   RC = log(0.4 / 0.2) = log 2 = 0.693147.
    # RCD = log 14 - log 2 = log 7 = 1.945910.
    p_clean = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]], dtype=torch.float64)
    p_adv = torch.tensor([[0.4, 0.5, 0.1], [0.1, 0.5, 0.4]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    rc = attacks.relative_confidence(p_clean, y)
    torch.testing.assert_close(rc, torch.tensor([math.log(14), math.log(14)], dtype=torch.float64))
    torch.testing.assert_close(
        attacks.relative_confidence(p_adv, y)[0], torch.tensor(math.log(2), dtype=torch.float64)
    )
    torch.testing.assert_close(
        attacks.rcd(p_adv, p_clean, y), torch.full((2,), math.log(7), dtype=torch.float64)
    )
    torch.testing.assert_close(attacks.rcd(p_clean, p_clean, y), torch.zeros(2, dtype=torch.float64))


def test_rcd_is_finite_for_a_saturated_softmax():
    p = F.softmax(torch.tensor([[200.0, 0.0, 0.0, 1.0]]), 1)
    assert torch.isfinite(attacks.relative_confidence(p, torch.tensor([1]))).all()


# ---------------------------------------------------------------- argument checks, in one place


class MustNotRun(nn.Module):
    def forward(self, x):
        raise AssertionError("the model ran before the arguments were checked")


def _x(**kw):
    return images(**kw)[0]


def _y():
    return images()[1]


BAD_CALLS = {
    # counts: whole numbers in range
    "ifgsm steps=-1": (lambda m: attacks.ifgsm(m, _x(), _y(), EPS, 0.01, -1), ValueError, "steps"),
    "ifgsm steps=2.7": (lambda m: attacks.ifgsm(m, _x(), _y(), EPS, 0.01, 2.7), TypeError, "steps"),
    "ifgsm steps=True": (lambda m: attacks.ifgsm(m, _x(), _y(), EPS, 0.01, True), TypeError, "steps"),
    "local_search pixels_per_step=0": (
        lambda m: attacks.local_search(m, _x(), _y(), pixels_per_step=0),
        ValueError,
        "pixels_per_step",
    ),
    "local_search steps=1.5": (lambda m: attacks.local_search(m, _x(), _y(), steps=1.5), TypeError, "steps"),
    "local_search radius=-1": (
        lambda m: attacks.local_search(m, _x(), _y(), radius=-1),
        ValueError,
        "radius",
    ),
    "local_search candidates=0": (
        lambda m: attacks.local_search(m, _x(), _y(), candidates=0),
        ValueError,
        "candidates",
    ),
    # sizes of steps: finite numbers >= 0
    "fgsm eps=-0.1": (lambda m: attacks.fgsm(m, _x(), _y(), -0.1), ValueError, "eps"),
    "fgsm eps=nan": (lambda m: attacks.fgsm(m, _x(), _y(), math.nan), ValueError, "eps"),
    "fgsm eps='0.1'": (lambda m: attacks.fgsm(m, _x(), _y(), "0.1"), ValueError, "eps"),
    "ifgsm alpha=-1": (lambda m: attacks.ifgsm(m, _x(), _y(), EPS, -1, 3), ValueError, "alpha"),
    "rand_fgsm alpha=inf": (lambda m: attacks.rand_fgsm(m, _x(), _y(), EPS, math.inf), ValueError, "alpha"),
    "gaussian sigma=-1": (lambda m: attacks.gaussian_noise(_x(), -1.0), ValueError, "sigma"),
    "gaussian eps=-1": (lambda m: attacks.gaussian_noise(_x(), 0.1, -1.0), ValueError, "eps"),
    # images: floating point, (N, C, H, W), in [0, 1]
    "fgsm x in [0, 2]": (lambda m: attacks.fgsm(m, _x(hi=2.0), _y(), EPS), ValueError, r"\[0, 1\]"),
    "fgsm x with NaN": (
        lambda m: attacks.fgsm(m, _x().index_fill(0, torch.tensor([0]), math.nan), _y(), EPS),
        ValueError,
        r"\[0, 1\]",
    ),
    "fgsm x uint8": (lambda m: attacks.fgsm(m, (_x() * 255).byte(), _y(), EPS), TypeError, "floating-point"),
    "fgsm x 3-D": (lambda m: attacks.fgsm(m, _x()[0], _y(), EPS), ValueError, r"\(N, C, H, W\)"),
    "local_search x in [-1, 1]": (
        lambda m: attacks.local_search(m, _x(lo=-1.0), _y()),
        ValueError,
        r"\[0, 1\]",
    ),
    # labels and targets: integer class indices, one per image
    "fgsm y float": (lambda m: attacks.fgsm(m, _x(), _y().float(), EPS, target=None), TypeError, "dtype"),
    "fgsm y bool": (lambda m: attacks.fgsm(m, _x(), _y() > 4, EPS, target=None), TypeError, "dtype"),
    "fgsm y shape": (lambda m: attacks.fgsm(m, _x(), _y()[:3], EPS, target=None), ValueError, "shape"),
    "fgsm y list": (lambda m: attacks.fgsm(m, _x(), [1, 2], EPS, target=None), TypeError, "y must be"),
    "fgsm target float": (
        lambda m: attacks.fgsm(m, _x(), _y(), EPS, target=_y().float()),
        TypeError,
        "target",
    ),
    "fgsm target 'most'": (lambda m: attacks.fgsm(m, _x(), _y(), EPS, target="most"), ValueError, "target"),
    "local_search y int64 (2, N)": (
        lambda m: attacks.local_search(m, _x(), _y()[None].expand(2, -1)),
        ValueError,
        "shape",
    ),
    # routes
    "fgsm grad_route='foo'": (
        lambda m: attacks.fgsm(m, _x(), _y(), EPS, grad_route="foo"),
        ValueError,
        "grad_route",
    ),
    "ifgsm steps=0 grad_route='foo'": (
        lambda m: attacks.ifgsm(m, _x(), _y(), EPS, 0.01, 0, grad_route="foo"),
        ValueError,
        "grad_route",
    ),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_every_attack_checks_its_arguments_before_any_work(name):
    call, error, message = BAD_CALLS[name]
    with pytest.raises(error, match=message):
        call(MustNotRun())


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_any_integer_label_dtype_gives_the_result_of_int64(dtype):
    model, (x, y) = linear_model(), images()
    expected = attacks.fgsm(model, x, y, EPS, target=None)
    torch.testing.assert_close(
        attacks.fgsm(model, x, y.to(dtype), EPS, target=None), expected, rtol=0, atol=0
    )
    torch.testing.assert_close(
        attacks.fgsm(model, x, y, EPS, target=y.to(dtype)), attacks.fgsm(model, x, y, EPS, target=y)
    )


@pytest.mark.parametrize("name", ["fgsm", "fgsm_untargeted", "ifgsm", "rand_fgsm_tramer"])
def test_gradient_attacks_under_inference_mode_say_they_need_gradients(name):
    model, (x, y) = linear_model(), images()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="needs gradients.*inference_mode"):
        ALL_ATTACKS[name](model, x, y)


def test_gradient_attacks_work_under_no_grad_and_the_others_under_inference_mode():
    model, (x, y) = linear_model(), images()
    expected = attacks.fgsm(model, x, y, EPS)
    with torch.no_grad():
        torch.testing.assert_close(attacks.fgsm(model, x, y, EPS), expected)
    with torch.inference_mode():
        attacks.gaussian_noise(x, 0.1, generator=gen())
        attacks.local_search(model, x, y, steps=1)


# ---------------------------------------------------------------- attacks.robust (beyond the paper)

robust = attacks.robust


def _two_class_linear(seed=0):
    """A 2-class linear model on 1×6×6 images: its exact minimal L-inf eps is |margin| / ||w1 - w0||_1
    (away from the [0, 1] bounds), which PGD's signed steps reach."""
    torch.manual_seed(seed)
    lin = nn.Linear(36, 2)
    return nn.Sequential(nn.Flatten(), lin), lin


def test_minimal_eps_finds_the_exact_margin_of_a_linear_model():
    model, lin = _two_class_linear()
    x = 0.4 + 0.2 * torch.rand(16, 1, 6, 6)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    y[:2] = 1 - y[:2]  # two clean errors: minimal eps 0
    w = (lin.weight[1] - lin.weight[0]).detach()
    exact = (logits[:, 1] - logits[:, 0]).abs().detach() / w.abs().sum()
    got = robust.minimal_eps(model, x, y, eps_max=0.1, steps=10, iters=10)
    assert got[:2].tolist() == [0.0, 0.0]
    for e, g in zip(exact[2:].tolist(), got[2:].tolist(), strict=True):
        if e > 0.1:
            assert g == math.inf
        else:  # the binary search's upper bound, within its resolution 0.1 / 2**10
            assert e - 1e-6 <= g <= e + 0.1 / 2**10 + 1e-6


def test_pgd_stays_in_the_ball_and_per_image_eps_is_per_image():
    model = TinySHC()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    eps = torch.tensor([0.0, 0.01, 0.02, 0.03, 0.05, 0.1])
    adv, ok = robust.pgd(model, x, y, eps, steps=3, restarts=2)
    assert ((adv - x).abs().amax((1, 2, 3)) <= eps + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(ok, robust.correct(model, adv, y) & robust.correct(model, x, y)) or not ok.any()
    assert adv[0].equal(x[0])  # eps 0 changes nothing
    with pytest.raises(ValueError, match="eps"):
        robust.pgd(model, x, y, torch.tensor([0.1, 0.2]), steps=1)


def test_pgd_fools_a_linear_model_at_twice_its_margin():
    model, lin = _two_class_linear(1)
    x = 0.4 + 0.2 * torch.rand(32, 1, 6, 6)
    y = robust.correct(model, x, torch.zeros(32, dtype=torch.long)).long().mul(0).add(model(x).argmax(1))
    w = (lin.weight[1] - lin.weight[0]).detach()
    exact = (model(x)[:, 1] - model(x)[:, 0]).abs().detach() / w.abs().sum()
    _, ok = robust.pgd(model, x, y, 2 * exact, steps=5)
    assert not ok.any()
    _, ok = robust.pgd(model, x, y, 0.9 * exact, steps=5)
    assert ok.all()


def test_frozen_maps_forward_is_the_model_at_the_clean_image_with_the_conv_routes_gradient():
    model = TinySHC().eval()
    x = torch.rand(4, 3, 8, 8)
    fwd = robust.frozen_maps_forward(model)
    torch.testing.assert_close(fwd(x.clone(), x), model(x), rtol=1e-5, atol=1e-5)
    # At adv == x0 the frozen maps are the maps: the gradient is the conv route's (dm/dx dropped).
    a = x.clone().requires_grad_(True)
    (g_frozen,) = torch.autograd.grad(fwd(a, x)[:, 3].sum(), [a])
    a = x.clone().requires_grad_(True)
    with attacks.grad_route(model, "conv"):
        (g_conv,) = torch.autograd.grad(model(a)[:, 3].sum(), [a])
    a = x.clone().requires_grad_(True)
    (g_both,) = torch.autograd.grad(model(a)[:, 3].sum(), [a])
    torch.testing.assert_close(g_frozen, g_conv, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(g_frozen, g_both, rtol=1e-3, atol=1e-6)  # the maps do carry gradient
    # Away from x0 the maps stay those of x0: the output differs from the model's own.
    far = 0.2 * x  # other channel statistics, other maps
    layer = model.shc
    with torch.no_grad():
        h_x, h_far = (F.relu(model.bn(model.conv(v))) for v in (x, far))
        m_x = shc.functional.statistical_map(h_x, *layer._hyper_params(), layer.kernel_size)
        out = F.relu(shc.functional.modulated_conv2d(h_far, layer.weight, m_x, layer.bias, padding=1))
        want = model.fc(F.adaptive_avg_pool2d(out, 2).flatten(1))
        torch.testing.assert_close(fwd(far, x), want, rtol=1e-5, atol=1e-6)
        assert (fwd(far, x) - model(far)).abs().max() > 1e-5
    assert "forward" not in vars(model.shc)  # the layer's own forward is back


def test_mean_std_projection_keeps_channel_statistics_inside_the_ball():
    torch.manual_seed(0)
    x0 = 0.2 + 0.6 * torch.rand(5, 3, 8, 8)
    adv = (x0 + 0.05 * torch.randn_like(x0)).clamp(0, 1)
    before = robust.channel_stat_gap(adv, x0)
    p = robust.mean_std_projection(adv, x0, 0.05, iters=10)
    assert ((p - x0).abs() <= 0.05 + 1e-6).all() and p.min() >= 0 and p.max() <= 1
    after = robust.channel_stat_gap(p, x0)
    assert after[0] < before[0] / 10 and after[1] < before[1] / 10


def test_autoattack_components_run_in_order_and_only_ever_lower_accuracy():
    model = TinySHC()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    with torch.no_grad():
        y[:6] = model(x[:6]).argmax(1)  # most images start correct
    out = robust.autoattack(model, x, y, 0.05, 10, apgd_steps=2, apgdt_steps=2, fab_steps=2, square_queries=5)
    assert list(out) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    steps = list(out.values())
    for before, after in zip(steps, steps[1:], strict=False):
        assert not (after & ~before).any()  # an image fooled once stays fooled
    assert robust.AUTOATTACK_STANDARD == dict(
        apgd_steps=100, apgdt_steps=100, fab_steps=100, square_queries=5000
    )
