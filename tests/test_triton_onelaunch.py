"""The Triton backend's one-launch forward (shc_kernels/triton/onelaunch.py): statistics,
hypernetwork and conv tiles as work items of one kernel, a window of samples apart.

Two things are checked through the Triton interpreter (``TRITON_INTERPRET=1``):
  - the schedule the kernel decodes from its ticket (run with DRY_RUN, which records it): every
    item exactly once, and every item after everything it waits for. On a GPU a violation is a
    deadlock or a tile that reads a map not yet written; the interpreter runs programs in ticket
    order, so the layer tests below would only see it as a hang. Shapes where tiles span many
    samples and chunks, uneven windows, several statistics items per sample and several column
    tiles and groups are covered;
  - the layer's forward outputs (y, m, mu, sigma, h) against the separate launches (statistical_map
    and modulated_conv2d's kernels) and y against the float64 reference, with several windows.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("set TRITON_INTERPRET=1 to run the Triton kernels on CPU", allow_module_level=True)

from helpers import make_params, rand_x, tol  # noqa: E402

from shc_kernels import reference  # noqa: E402
from shc_kernels.triton import unavailable_reason  # noqa: E402

if unavailable_reason() is not None:
    pytest.skip(f"triton backend unavailable: {unavailable_reason()}", allow_module_level=True)

import triton  # noqa: E402

from shc_kernels.triton import layer, onelaunch  # noqa: E402

BW = onelaunch.BW


def _schedule(n, ohw, cg, groups, ds, w0, ws, block_m, block_n):
    """[(kind, index, lo, hi)] by ticket, as the kernel decodes it (DRY_RUN): lo, hi what the item
    signals or waits for (statistics: the chunk it counts into; hypernetwork: its done counter and
    the count it waits for; tile: the chunks it waits for, lo to hi)."""
    tiles = triton.cdiv(n * ohw, block_m) * triton.cdiv(cg, block_n) * groups
    total = tiles + n * ds + triton.cdiv(n, BW)
    out = torch.full((4 * total,), -1, dtype=torch.int32)
    sync = torch.zeros(1 + 2 * triton.cdiv(n, BW), dtype=torch.int32)
    f = torch.zeros(1)
    nwin = 1 + triton.cdiv(max(n - w0, 0), ws)
    onelaunch._shc_fwd_kernel.fn[(total,)](
        f, f, f, f, f, f, f, f, out, f, f, f, f, f, sync,
        n, n * ohw, ohw, 1, 1, 1, cg, 1, 9, 3, 1, 1, 1, 1e-5,
        1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        1, ds, 1, w0, ws, nwin, groups,
        HAS_BIAS=False, HAS_B1=False, HAS_B2=False, INPUT_PRECISION="ieee", MLP_PRECISION="ieee",
        DG_POW2=1, DG_DIV=1, STATS_D=16, STATS_Q=16, MLP_J=16, MLP_H=16, BLOCK_T=16, BWC=BW,
        STATS_STAGES=1, HYPER_STAGES=1,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=16, DRY_RUN=True,
    )  # fmt: skip
    assert int(sync[0]) == total
    return [tuple(p) for p in out.view(total, 4).tolist()], tiles


# (N, OH*OW, CG, groups, statistics items per sample, W0, WS, BLOCK_M, BLOCK_N)
SCHEDULES = {
    "one-window": (5, 9, 4, 1, 1, 16, 16, 16, 16),
    "many-windows": (70, 9, 20, 1, 2, 16, 16, 16, 16),
    "uneven-last": (70, 36, 8, 2, 2, 16, 48, 64, 16),
    "tile-spans-chunks": (90, 4, 16, 1, 1, 16, 16, 128, 16),
    "big-planes": (36, 400, 64, 1, 3, 16, 16, 128, 64),
    "stats-outnumber-tiles": (40, 1, 4, 1, 5, 16, 16, 64, 16),
}

INTERLEAVED = [SCHEDULES[k] for k in ("many-windows", "uneven-last", "big-planes")]


@pytest.mark.parametrize("case", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_schedule_runs_every_item_once_after_what_it_waits_for(case):
    n, ohw, cg, groups, ds, w0, ws, block_m, block_n = case
    order, tiles = _schedule(*case)
    ticket = {(k, i): t for t, (k, i, _lo, _hi) in enumerate(order)}
    waits = {(k, i): (lo, hi) for k, i, lo, hi in order}
    nchunks = triton.cdiv(n, BW)
    expected = {(0, i) for i in range(n * ds)} | {(1, c) for c in range(nchunks)}
    expected |= {(2, i) for i in range(tiles)}
    assert len(ticket) == len(order) and set(ticket) == expected, "an item missing or run twice"
    for i in range(n * ds):  # a statistics item counts into its sample's chunk
        assert waits[(0, i)][0] == i // ds // BW
    for c in range(nchunks):  # a hypernetwork chunk after its samples' statistics, waiting for all
        mine = range(c * BW * ds, min(c * BW + BW, n) * ds)
        assert max(ticket[(0, i)] for i in mine) < ticket[(1, c)], f"chunk {c} before its statistics"
        assert waits[(1, c)] == (c, len(mine)), f"chunk {c} waits for the wrong count"
    tng = triton.cdiv(cg, block_n) * groups
    for i in range(tiles):  # a tile after, and waiting for, the chunks of every sample its rows cover
        pid_m = i // tng
        first = pid_m * block_m // ohw
        last = min(pid_m * block_m + block_m - 1, n * ohw - 1) // ohw
        assert waits[(2, i)] == (first // BW, last // BW), f"tile {i} waits for the wrong chunks"
        for c in range(first // BW, last // BW + 1):
            assert ticket[(1, c)] < ticket[(2, i)], f"tile {i} before chunk {c}"
    # the point of the schedule: statistics of later windows interleaved with earlier tiles (where
    # windows hold tiles: at 4 pixels per sample a 128-row tile spans two windows of 16)
    if case in INTERLEAVED:
        first_tile = min(t for t, item in enumerate(order) if item[0] == 2)
        later_stats = [t for t, (k, i, *_) in enumerate(order) if k == 0 and i // ds >= w0 + ws]
        assert min(later_stats) > first_tile, "window 2's statistics ran before any tile"
        assert any(order[t - 1][0] == 2 and order[t + 1][0] == 2 for t in later_stats), "not interleaved"


def test_window_size_follows_the_waves_and_the_l2(monkeypatch):
    class _Props:
        multi_processor_count = 132
        L2_cache_size = 50 * 2**20

    monkeypatch.setattr(onelaunch, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d: _Props())
    cuda = torch.device("cuda")
    # 64@56 bf16: 25 tiles per sample, 2 * 401 KB of x + 401 KB of y -> two waves need 22 samples (32),
    # the L2's half holds 20 (16)
    w0, ws = onelaunch.window_samples(256, 2 * (2 * 64 * 3136 + 64 * 3136), 3136 / 128, cuda)
    assert (w0, ws) == (16, 16)
    # 512@7: 1.5 tiles per sample: two waves need 345 samples (352); half the L2 holds 174 (160)
    assert onelaunch.window_samples(256, 2 * 3 * 512 * 49, 49 / 128 * 4, cuda) == (16, 160)
    # ... and with a large L2 the batch (256) caps it
    _Props.L2_cache_size = 256 * 2**20
    assert onelaunch.window_samples(256, 2 * 3 * 512 * 49, 49 / 128 * 4, cuda) == (16, 256)


# (N, D, C, H, W, kernel, stride, padding, groups), dtype, channels_last: N spans several windows
CASES = {
    "n40-3x3-fp32-cl": ((40, 8, 6, 5, 5, 3, 1, 1, 1), torch.float32, True),
    "n35-g2-s2-fp16": ((35, 40, 8, 9, 8, 3, 2, 1, 2), torch.float16, False),
    "n35-g2-s2-fp32-cl": ((35, 40, 8, 9, 8, 3, 2, 1, 2), torch.float32, True),
    "n33-5x5-fp32": ((33, 6, 4, 6, 7, 5, 1, 2, 1), torch.float32, False),
}


@pytest.mark.parametrize(("case", "dtype", "channels_last"), CASES.values(), ids=CASES.keys())
def test_one_launch_forward_matches_separate_launches_and_reference(case, dtype, channels_last):
    n, d, c, h, w, k, s, p, g = case
    w_, b, f1w, f1b, f2w, f2b = make_params(d, c, k, k, groups=g, dtype=torch.float64, seed=3)
    x64 = rand_x(n, d, h, w, seed=4, channels_last=channels_last) * 3 + 5  # a mean well off 0
    x, wt, bt = x64.to(dtype), w_.to(dtype), b.to(dtype)
    conf = ((s, s), (p, p), (1, 1), g)
    f1, f2 = f1w.float(), f2w.float()
    b1, b2 = f1b.float(), f2b.float()
    y, m, mu, sigma, hid = onelaunch.layer_forward(x, wt, bt, f1, b1, f2, b2, *conf, 1e-5)
    y_sep, m_ref, mu_ref, sigma_ref, h_ref = layer.separate_forward(x, wt, bt, f1, b1, f2, b2, *conf, 1e-5)
    torch.testing.assert_close(mu, mu_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sigma, sigma_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hid, h_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m, m_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y.float(), y_sep.float(), **tol(dtype))
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    y64 = reference.shc_conv2d(x.double(), wt.double(), bt.double(), f1w, f1b, f2w, f2b, stride=s, padding=p,
                               groups=g)  # fmt: skip
    torch.testing.assert_close(y.double(), y64, **tol(dtype))


def test_one_launch_forward_without_biases_and_empty_batch():
    n, d, c, h, w, k = 20, 6, 5, 4, 4, 3
    w_, _b, f1w, _f1b, f2w, _f2b = make_params(d, c, k, k, dtype=torch.float32, seed=5)
    x = rand_x(n, d, h, w, dtype=torch.float32, seed=6)
    conf = ((1, 1), (1, 1), (1, 1), 1)
    y, m, *_ = onelaunch.layer_forward(x, w_, None, f1w, None, f2w, None, *conf, 1e-5)
    y64 = reference.shc_conv2d(
        x.double(), w_.double(), None, f1w.double(), None, f2w.double(), None, padding=1
    )
    torch.testing.assert_close(y.double(), y64, **tol(torch.float32))
    outs = onelaunch.layer_forward(x[:0], w_, None, f1w, None, f2w, None, *conf, 1e-5)
    assert [tuple(t.shape) for t in outs] == [(0, c, h, w), (0, k, k), (0, d), (0, d), (0, d // 2)]


def test_the_gpu_check_script_runs(tmp_path):
    """bench/onelaunch_check.py, which bench/gpu_check.sh runs on the first GPU, in its CPU smoke mode."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "onelaunch_check.py"
    spec = importlib.util.spec_from_file_location("onelaunch_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--markdown", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    assert "| 32@6/2 |" in text and "| yes |" in text and "| NO |" not in text


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_the_layer_op_on_the_one_launch_forward_matches_reference(channels_last, monkeypatch):
    """layer.ONE_LAUNCH routes shc_conv2d's forward through onelaunch.py; its saved m, mu, sigma and h
    feed the backward: y and every gradient against the float64 reference."""
    import test_triton_fused as fused

    monkeypatch.setattr(layer, "ONE_LAUNCH", True)
    calls = []
    real = onelaunch.layer_forward
    monkeypatch.setattr(onelaunch, "layer_forward", lambda *a: calls.append(1) or real(*a))
    fused._compare((20, 6, 5, 6, 5, 3, 2, 1, 1), torch.float32, channels_last, "both")
    assert calls, "the layer did not run the one-launch forward"
