"""shc study: the resumable robustness study (--quick on the digits), its statistics, its plan,
and bad command lines of shc study and shc demo."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from shc_kernels.research import study, study_report

QUICK = ["study", "--quick", "--data", "digits", "--no-progress"]


def _mtimes(root):
    return {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(root)
        for f in files
    }


def test_quick_study_runs_every_unit_resumes_and_retrains_a_lost_checkpoint_identically(tmp_path, capsys):
    from shc_kernels import cli

    work, out = tmp_path / "work", tmp_path / "out"
    args = [*QUICK, "--work", str(work), "--out", str(out)]
    units = study.plan(study.QUICK)
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert f"0 of {len(units)} units done" in first and f"{len(units)} of {len(units)} units done" in first
    files = {os.path.relpath(p, out / "units") for p in _mtimes(out / "units")}
    assert files == {u.path for u in units}
    stages = {u.stage for u in units}
    assert stages == set(study.STAGE_KEYS)  # every stage ran
    rec = json.loads((out / "units" / "pgd" / "std_shc_s0__eps=0.05.json").read_text())
    assert set(rec["result"]["bits"]) <= {"0", "1"} and len(rec["result"]["bits"]) == study.QUICK["images"]
    prov = rec["provenance"]
    assert prov["torch"] and prov["cpu"] and prov["date"] and prov["backend"] and "commit" in prov
    assert rec["key"]["code"] == study.code_hashes()["study"] and rec["library"]
    report = (out / "report.md").read_text()
    for title in ("Positive control", "minimal eps", "masking", "maps frozen", "Mechanism", "Rerun", "Holm"):
        assert title in report, title
    assert "seed 0: identical" in report  # the rerun trains the same weights

    # A second run computes nothing.
    before = _mtimes(out / "units")
    assert cli.main(args) == 0
    assert f"{len(units)} of {len(units)} units done; 0 to run" in capsys.readouterr().out
    assert _mtimes(out / "units") == before

    # Every trained model's weights are kept beside the units.
    assert {f for f in os.listdir(out / "models")} == {f"{u.model}.pt" for u in units if u.stage == "train"}

    # A fresh machine: no checkpoints. The kept weights are attacked; a model without them is
    # retrained, and only where a missing unit needs it, to the same weights.
    shutil.rmtree(work)
    (out / "models" / "std_plain_s0.pt").unlink()
    stale = out / "units" / "pgd" / "std_plain_s0__eps=0.01.json"
    rec = json.loads(stale.read_text())
    rec["key"]["settings"]["pgd_steps"] = 999  # computed with other settings: recomputed
    stale.write_text(json.dumps(rec))
    assert cli.main([*args[:-4], "--work", str(work), "--out", str(out), "--status"]) == 0
    assert f"{len(units) - 1} of {len(units)} units done (1 stale" in capsys.readouterr().out
    assert cli.main(args) == 0
    log = capsys.readouterr().out
    assert "train std_plain_s0" in log and "differ" not in log
    assert "train std_shc_s0" not in log and "train adv" not in log  # nothing else needed a model
    after = _mtimes(out / "units")
    changed = {os.path.relpath(p, out / "units") for p in after if after[p] != before.get(p)}
    assert changed == {"pgd/std_plain_s0__eps=0.01.json", "train/std_plain_s0.json"}
    assert (out / "models" / "std_plain_s0.pt").is_file()

    # Kept weights that are not the recorded ones are not attacked: that model is retrained.
    shutil.rmtree(work)
    kept = out / "models" / "std_shc_s0.pt"
    state = torch.load(kept, weights_only=True)
    name = next(n for n, t in state["model"].items() if t.is_floating_point())
    state["model"][name] = state["model"][name] + 1
    torch.save(state, kept)
    pgd = out / "units" / "pgd" / "std_shc_s0__eps=0.01.json"
    pgd.unlink()
    assert cli.main(args) == 0
    log = capsys.readouterr().out
    assert "does not hold the weights its train unit recorded" in log and "train std_shc_s0" in log
    assert "differ" not in log and pgd.is_file()

    # --report-only reads the units alone.
    shutil.rmtree(work)
    assert cli.main([*args, "--report-only"]) == 0
    assert not work.exists() or not os.listdir(work)


def test_the_library_hash_leaves_out_only_kernels_the_studys_models_never_run():
    """The depthwise method's kernels are not hashed: the method takes grouped convs only
    (depthwise::applies, inline in the hashed header) and Plain-10 has none."""
    from shc_kernels.research import models

    root = os.path.dirname(os.path.dirname(os.path.abspath(study.__file__)))
    csrc = os.path.join(os.path.dirname(root), "csrc", "cpu")
    assert all(os.path.isfile(os.path.join(csrc, f)) for f in study.LIBRARY_UNUSED)
    header = open(os.path.join(csrc, "depthwise.h")).read()
    assert "inline bool applies(const shc::ConvGeom& g) { return g.groups > 1 &&" in header
    for cfg in (study.DEFAULT, study.QUICK):
        for shc in (False, True):
            net = models.build(cfg["arch"], 10, shc=shc, small_input=True, width=cfg["width"])
            convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
            assert convs and all(m.groups == 1 for m in convs)
    # the left-out files are really left out, and naming no file leaves nothing out
    base = study._hash_paths([csrc], study.LIBRARY_UNUSED)
    assert base != study._hash_paths([csrc]) == study._hash_paths([csrc], ("nothing.cpp",))


def test_mcnemar_holm_and_bootstrap_give_the_known_values():
    assert study_report.mcnemar(0, 5) == pytest.approx(2 / 32)
    assert study_report.mcnemar(3, 3) == 1.0 and study_report.mcnemar(0, 0) == 1.0
    assert study_report.mcnemar(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    # past 1023 discordant pairs 2.0**n overflowed (pooled seeds): exact, and symmetric at any size
    assert study_report.mcnemar(706 + 700, 144 + 150) < 1e-100
    assert study_report.mcnemar(1000, 1000) == 1.0
    assert study_report.mcnemar(600, 500) == pytest.approx(study_report.mcnemar(500, 600))
    assert 0.002 < study_report.mcnemar(600, 500) < 0.004  # normal approximation: z = 3.0, p = 0.0027
    assert study_report.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert study_report.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    torch.manual_seed(0)
    plain = torch.rand(3, 400) < 0.5
    lo, hi = study_report.bootstrap_diff(plain, plain.clone())
    assert lo == hi == 0.0
    shc = plain.clone()
    shc[:, :40] = True
    shc[:, 40:80] = False
    true = 100 * float(shc.float().mean() - plain.float().mean())
    lo, hi = study_report.bootstrap_diff(plain, shc)
    assert lo < true < hi and hi - lo < 10


def test_a_difference_one_seed_carries_and_another_does_not_is_not_called_one():
    torch.manual_seed(0)
    plain = torch.rand(2, 1000) < 0.5
    shc = plain.clone()
    shc[0, :150] = True  # seed 0: SHC right on 150 more images
    shc[1, 150:190] = False  # seed 1: SHC wrong on 40 more
    assert study_report.bootstrap_diff_seeds(plain[:1].float(), shc[:1].float()) is None
    lo, hi = study_report.bootstrap_diff(plain, shc)
    assert lo > 0  # the images-only interval: these two pairs of models differ
    lo_s, hi_s = study_report.bootstrap_diff_seeds(plain.float() * 100, shc.float() * 100)
    assert lo_s < 0 < hi_s  # with the seeds resampled it spans 0
    assert study_report.verdict(0.001, (lo_s, hi_s)) == "these models only"
    # the same shift in both seeds: the interval excludes 0 and the difference is called one
    shc[1] = plain[1]
    shc[1, 150:300] = True
    lo_s, hi_s = study_report.bootstrap_diff_seeds(plain.float() * 100, shc.float() * 100)
    true = 100 * float(shc.float().mean() - plain.float().mean())
    assert 0 < lo_s < true < hi_s
    assert study_report.verdict(0.001, (lo_s, hi_s)) == "yes"
    assert study_report.verdict(0.2, (lo_s, hi_s)) == "no"
    assert study_report.verdict(0.001, None) == "these models only"


def test_the_plan_meets_the_issues_minimums_and_puts_the_first_pair_first():
    cfg = study.DEFAULT
    grid = cfg["eps_grid"]
    assert len(grid) >= 6 and min(grid) == 0.005 and max(grid) == 0.05
    assert cfg["images"] >= 1000 and len(cfg["seeds"]) >= 5 and len(cfg["adv_seeds"]) >= 2
    assert (cfg["aa_steps"], cfg["aa_queries"]) == (100, 5000)
    units = study.plan(cfg)
    assert len({u.path for u in units}) == len(units)
    assert units[0] == study.Unit("train", "std_plain_s0")
    first_adv = next(i for i, u in enumerate(units) if u.model.startswith("adv"))
    assert all(u.model.endswith("_s0") for u in units[:first_adv])  # seed 0's pair, then the control
    for u in units:  # every model is trained before its first attack
        assert units.index(study.Unit("train", u.model)) <= units.index(u)


def _bad_cases(tmp):
    (tmp / "afile").write_text("x")
    (tmp / "empty").mkdir()
    w = ["--work", str(tmp / "w"), "--out", str(tmp / "r")]
    return [
        (["study", *w, "--threads", "0"], "--threads"),
        (["study", *w, "--limit", "0"], "--limit"),
        (["study", *w, "--data", str(tmp / "nowhere")], "--data"),
        (["study", *w, "--data", str(tmp / "empty")], ("--data", "IDX")),
        (["study", "--work", str(tmp / "afile"), "--out", str(tmp / "r")], ("--work", "is a file")),
        (["study", "--work", str(tmp / "w"), "--out", str(tmp / "afile")], ("--out", "is a file")),
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


def test_training_resumed_from_its_epoch_checkpoint_gives_the_same_weights(tmp_path):
    from shc_kernels.research import advtrain, data

    train, test, k = data.digits(28)
    train = torch.utils.data.TensorDataset(train.tensors[0][:256, :1].contiguous(), train.tensors[1][:256])
    test = torch.utils.data.TensorDataset(test.tensors[0][:64, :1].contiguous(), test.tensors[1][:64])
    kw = dict(arch="plain10", shc=True, width=0.0625, seed=3, batch_size=32, lr=0.05, milestones=(1,),
              weight_decay=5e-4, max_steps=3, adv_eps=0.1, adv_alpha=0.125, log=lambda _: None)  # fmt: skip
    whole = advtrain.fit(str(tmp_path / "a.pt"), train, test, k, epochs=2, **kw)
    advtrain.fit(str(tmp_path / "b.pt"), train, test, k, epochs=1, **kw)  # stopped after one epoch
    state = torch.load(tmp_path / "b.pt", weights_only=True)
    assert state["epoch"] == 1
    resumed = advtrain.fit(str(tmp_path / "b.pt"), train, test, k, epochs=2, **kw)
    assert resumed["weights"] == whole["weights"] and len(resumed["epochs"]) == 2
    other = advtrain.fit(str(tmp_path / "c.pt"), train, test, k, epochs=2, **(kw | {"seed": 4}))
    assert other["weights"] != whole["weights"]


def test_fgsm_rs_examples_stay_within_eps_and_in_the_image_range():
    from shc_kernels.research import advtrain, models

    torch.manual_seed(0)
    net = models.plain10(num_classes=10, shc=True, small_input=True, width=0.0625)
    x, y = torch.rand(8, 1, 12, 12), torch.randint(0, 10, (8,))
    adv = advtrain.fgsm_rs(net, x, y, 0.1, 0.125, torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > 0.05  # it moved
