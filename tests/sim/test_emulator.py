"""The SIMT layer itself: each kind of bug it exists to catch is caught, in a small kernel planted
with it (csrc/simt/emulator_checks.cpp), and the correct kernel passes in every emulation."""

from __future__ import annotations

import pytest
import torch
from sim_helpers import emulation

ORDERS = ("forward", "reverse", "shuffled")


def ops():
    return torch.ops.shc_sim_test


@pytest.mark.parametrize("order", ORDERS)
def test_barrier_orders_shared_memory_in_every_order(sim, order):
    x = torch.arange(512, dtype=torch.float32)
    with emulation(order=order, seed=3):
        y = ops().reverse_blocks(x, True)
    torch.testing.assert_close(y, x.view(2, 256).flip(1).reshape(-1))


@pytest.mark.parametrize("order", ORDERS)
def test_a_missing_syncthreads_gives_wrong_results(sim, order):
    x = torch.arange(512, dtype=torch.float32)
    with emulation(order=order, seed=3):
        y = ops().reverse_blocks(x, False)
    want = x.view(2, 256).flip(1).reshape(-1)
    # Threads that ran before their partner read poisoned (NaN) or stale shared memory.
    assert not torch.equal(y, want)


def test_shared_memory_starts_poisoned(sim):
    assert torch.isnan(ops().read_shared(False)).all()
    assert (ops().read_shared(True) == 2).all()
    assert torch.isnan(ops().read_shared(False)).all(), "poisoned again for every block"


@pytest.mark.parametrize(
    "which, message",
    [
        ("divergent", "__syncthreads reached by 128 threads while 128 have exited"),
        ("split_barrier", "threads wait at different __syncthreads"),
        ("partial_mask", "partial mask"),
        ("hang", "spin wait longer than the timeout"),
    ],
)
def test_what_hangs_or_is_undefined_on_a_gpu_is_an_error(sim, which, message):
    with pytest.raises(RuntimeError, match=message):
        ops().run_error_kernel(which, 0.2)


@pytest.mark.parametrize("order", ORDERS)
def test_warp_shuffle_sum(sim, order):
    x = torch.randn(512, generator=torch.Generator().manual_seed(0))
    with emulation(order=order, seed=5):
        y = ops().warp_sums(x)
    want = x.view(16, 32).sum(1, keepdim=True).expand(16, 32).reshape(-1)
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("live_blocks", [1, 2])
def test_ready_flag_handshake_is_correct(sim, live_blocks):
    with emulation(live_blocks=live_blocks):
        out = ops().handshake(1, True, 0.2, 2)
    assert out.tolist() == [1000.0]


def test_a_removed_ready_flag_wait_is_caught_with_two_live_blocks(sim):
    with emulation(live_blocks=2):
        out = ops().handshake(1, False, 5.0, 2)
        counters = sim.counters()
    assert out.tolist() == [-1.0], "the consumer read before the producer wrote"
    assert counters["max_live"] >= 2


def test_a_removed_ready_flag_wait_passes_unseen_with_one_live_block(sim):
    # Why the parity tests also run with 2 live blocks: one block at a time runs the items in
    # order, so every wait is already satisfied.
    with emulation(live_blocks=1):
        out = ops().handshake(1, False, 0.05, 2)
    assert out.tolist() == [1000.0]


def _wmma_case():
    g = torch.Generator().manual_seed(0)
    a, b, w = (torch.randn(16, 16, generator=g) for _ in range(3))
    a, b = a.half(), b.half()
    want = (w.double() * (a.double() @ b.double())).sum().item()
    return a, b, w, want


@pytest.mark.parametrize("mapping", ["hardware", "scrambled"])
@pytest.mark.parametrize("seed", [0, 1])
def test_wmma_through_fragments_is_right_on_every_mapping(sim, mapping, seed):
    a, b, w, want = _wmma_case()
    with emulation(mapping=mapping, seed=seed):
        got = ops().wmma_dot(a, b, w, False).item()
    assert got == pytest.approx(want, rel=1e-4, abs=1e-3)


def test_code_assuming_the_hardware_fragment_mapping_is_caught_by_the_scrambled_one(sim):
    a, b, w, want = _wmma_case()
    with emulation(mapping="hardware"):
        assert ops().wmma_dot(a, b, w, True).item() == pytest.approx(want, rel=1e-4, abs=1e-3)
    with emulation(mapping="scrambled", seed=1):
        assert ops().wmma_dot(a, b, w, True).item() != pytest.approx(want, rel=1e-2, abs=1e-2)


def test_configure_rejects_bad_settings(sim):
    with pytest.raises(ValueError, match="order"):
        sim.configure(order="sideways")
    with pytest.raises(ValueError, match="mapping"):
        sim.configure(mapping="diagonal")
    with pytest.raises(ValueError, match="sm_count"):
        sim.configure(sm_count=0)
    with pytest.raises(ValueError, match="live_blocks"):
        sim.configure(live_blocks=100)
    with pytest.raises(TypeError):
        sim.configure(2)  # keyword-only


def test_settings_round_trip(sim):
    got = sim.configure(sm_count=2, live_blocks=2, order="reverse", mapping="scrambled", seed=9)
    assert got["sm_count"] == 2 and got["live_blocks"] == 2 and got["order"] == "reverse"
    assert got["mapping"] == "scrambled" and got["seed"] == 9
    assert sim.settings() == got
