"""shc study: the resumable robustness study (a tiny run on the digits), its report rules, and
bad command lines of shc study and shc demo."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from shc_kernels.research import models, study, study_report

TINY = ["study", "--tiny", "--data", "digits", "--no-progress"]


def _mtimes(root):
    return {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(root)
        for f in files
    }


def test_tiny_study_writes_the_report_and_a_rerun_only_reads_the_cache(tmp_path, capsys):
    from shc_kernels import cli

    work, out = tmp_path / "work", tmp_path / "out"
    assert cli.main([*TINY, "--work", str(work), "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "running" in first
    names = set(os.listdir(out))
    assert {
        "report.md",
        "summary.csv",
        "results.json",
        "acc_vs_eps.png",
        "lsa_curve.png",
        "routes.png",
    } <= names
    res = json.loads((out / "results.json").read_text())
    keys = {"plain10_s0", "plain10_shc_s0", "plain10_s1", "plain10_shc_s1"}
    for unit in ("clean", "paper", "lsa", "pgd", "curve", "square"):
        assert set(res["per_model"][unit]) == keys, unit
    assert set(res["per_model"]["autoattack"]) == {"plain10_s0", "plain10_shc_s0"}  # first seed only
    assert set(res["per_model"]["transfer"]) == {
        "plain10_s0->plain10_shc_s0", "plain10_shc_s0->plain10_s0",
        "plain10_s1->plain10_shc_s1", "plain10_shc_s1->plain10_s1",
    }  # fmt: skip
    pgd = next(r for r in res["summary"] if r["metric"].startswith("PGD-2, eps=0.3, 2 restarts"))
    assert pgd["plain_n"] == pgd["shc_n"] == 2 and len(pgd["shc_values"]) == 2
    assert "exceeds spread?" in (out / "report.md").read_text()
    assert res["run"]["versions"]["torchattacks"] and res["run"]["machine"]

    before = _mtimes(work)
    assert cli.main([*TINY, "--work", str(work), "--out", str(out)]) == 0
    again = capsys.readouterr().out
    assert "running" not in again and "cached" in again
    assert _mtimes(work) == before  # no model retrained, no attack rerun

    # --report-only rewrites the report from the cache and still names the run that computed it.
    assert cli.main([*TINY, "--work", str(work), "--out", str(out), "--report-only"]) == 0
    run = json.loads((out / "results.json").read_text())["run"]
    assert run["computed_by"]["command"] == "shc " + " ".join([*TINY, "--work", str(work), "--out", str(out)])
    assert "the results were computed by `shc study" in (out / "report.md").read_text()


def _row(metric, plain, shc):
    return [("S", metric, f"plain10_s{i}", v) for i, v in enumerate(plain)] + [
        ("S", metric, f"plain10_shc_s{i}", v) for i, v in enumerate(shc)
    ]


def test_difference_exceeds_the_spread_only_beyond_both_stds():
    rows = _row("far", [10.0, 12.0, 11.0], [30.0, 31.0, 29.0]) + _row(
        "near", [10.0, 14.0, 12.0], [13.0, 15.0, 11.0]
    )
    rows += _row("one seed", [5.0], [9.0])
    got = {r["metric"]: r for r in study_report.aggregate(rows, ["plain10"])}
    assert got["far"]["exceeds_spread"] is True and got["far"]["diff"] == pytest.approx(19.0)
    assert got["far"]["spread"] == pytest.approx(2.0)  # std 1 + std 1
    assert got["near"]["exceeds_spread"] is False
    assert got["one seed"]["exceeds_spread"] is None and math.isnan(got["one seed"]["spread"])


def test_masking_checks_flag_a_weaker_iterative_attack():
    raw = {
        "pgd": {"plain10_s0": {"pgd": 20.0, "fgsm": 10.0}},
        "square": {"plain10_s0": {"acc": 50.0}},
        "transfer": {"plain10_shc_s0->plain10_s0": {"acc": 60.0}},
        "curve": {"plain10_s0": {"acc": {"0.3": 0.0}}},
    }
    (checks,) = study_report.masking_checks(raw, {"curve_eps": [0.1, 0.3]})
    verdicts = list(checks["checks"].values())
    assert verdicts == [False, True, True, True]  # PGD 20% > FGSM 10%: flagged


def test_pgd_restarts_attack_only_the_survivors_and_never_lose_ground():
    torch.manual_seed(0)
    net = models.plain10(num_classes=10, shc=True, small_input=True, width=0.0625).eval()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        y = net(x).argmax(1)  # every image starts correct
    adv, first, final = study.pgd_restarts(net, x, y, eps=0.05, steps=2, restarts=3, seed=0)
    assert ((adv - x).abs().amax() <= 0.05 + 1e-6) and adv.min() >= 0 and adv.max() <= 1
    assert (final <= first).all()  # a restart can only add fooled images
    with torch.no_grad():
        assert torch.equal(net(adv).argmax(1) == y, final)


def _bad_cases(tmp):
    (tmp / "afile").write_text("x")
    (tmp / "empty").mkdir()
    w = ["--work", str(tmp / "w"), "--out", str(tmp / "r")]
    return [
        (["study", *w, "--seeds", "0"], "--seeds"),
        (["study", *w, "--seeds", "0", "0"], "--seeds"),
        (["study", *w, "--seeds", "-1", "2"], "--seeds"),
        (["study", *w, "--width", "0"], "--width"),
        (["study", *w, "--epochs", "0"], "--epochs"),
        (["study", *w, "--eps", "-0.1"], "--eps"),
        (["study", *w, "--threads", "0"], "--threads"),
        (["study", *w, "--archs", "bogus"], "--archs"),
        (["study", *w, "--data", str(tmp / "nowhere")], "--data"),
        (["study", *w, "--data", str(tmp / "empty")], ("--data", "IDX")),
        (["study", "--work", str(tmp / "afile"), "--out", str(tmp / "r")], ("--work", "is a file")),
        (["study", "--work", str(tmp / "w"), "--out", str(tmp / "afile")], ("--out", "is a file")),
        ([*TINY, *w, "--report-only"], "not trained yet"),
        (["demo", "--epochs", "0"], "--epochs"),
        (["demo", "--train-steps", "0"], "--train-steps"),
        (["demo", "--seed", "-1"], "--seed"),
        (["demo", "--digits-size", "0"], "--digits-size"),
        (["demo", "--data", "bogus"], "--data"),
        (["demo", "--out", str(tmp / "afile")], ("--out", "is a file")),
    ]


def test_bad_shc_study_and_demo_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    from cli_cases import assert_rejected

    for argv, expect in _bad_cases(tmp_path):
        assert_rejected(argv, expect, tmp_path)


def test_study_and_demo_help_have_no_rst_markup():
    from shc_kernels.cli import demo

    for mod in (study, demo):
        assert "``" not in mod.build_parser().format_help()
