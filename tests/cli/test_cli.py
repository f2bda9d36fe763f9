"""The `shc` command: info and the bench table."""

from __future__ import annotations

import json

from shc_kernels import backends, cli
from shc_kernels.cli import bench


def test_info_lists_every_backend_with_its_state(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for name in backends.BACKENDS:
        assert f"  {name} " in out
    assert "reference  available" in out


def test_bench_writes_json_and_markdown(tmp_path):
    js, md = tmp_path / "b.json", tmp_path / "b.md"
    argv = [
        "--shapes",
        "smoke",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--batch",
        "2",
        "--json",
        str(js),
        "--markdown",
        str(md),
        "--no-memory",
    ]
    assert bench.main(argv) == 0
    rows = json.loads(js.read_text())["rows"]
    methods = {r["method"] for r in rows}
    assert {"plain", "naive", "groups", "unfold_bmm"} <= methods
    assert all(r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 for r in rows)
    assert all(abs(r["fwd_ratio"] - 1.0) < 1e-12 for r in rows if r["method"] == "plain")
    assert "| smoke | plain |" in md.read_text()


def test_bench_methods_compute_the_same_layer():
    # Every benchmarked method is the same SHC layer (plain excepted): compare their outputs.
    x, params = bench.make_inputs(6, 8, 9, 3, "cpu", bench.torch.float32, False)
    for stride in (1, 2):
        fns = bench.method_fns(stride)
        ref = fns["naive"](x, params)
        for name, fn in fns.items():
            if name not in ("plain", "naive"):
                bench.torch.testing.assert_close(fn(x, params), ref, rtol=1e-4, atol=1e-4, msg=name)


def test_bench_lists_only_backends_for_the_device():
    assert "shc:cpu" in bench.method_fns(1, "cpu")
    assert not any(name.startswith("shc:cpu") for name in bench.method_fns(1, "cuda"))
