"""Trainer, configs, checkpoints/resume, failures and the multi-seed summary (CPU, tiny problems)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from guiding_nc.core.methods import METHOD_NAMES
from guiding_nc.training.config import CONFIG_DIR, ConfigError, TrainConfig, load_config, parse_overrides
from guiding_nc.training.seed_sweep import run_seeds, summarize_runs
from guiding_nc.training.trainer import NonFiniteError, Trainer, train_run, validate_labels

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if "base" not in p.stem and p.stem != "paper_defaults")


def ufm(tmp_path, **kw):
    cfg = dict(name="t", output_dir=str(tmp_path), dataset="ufm", model="ufm", num_classes=4, num_samples=32,
               feature_dim=16, batch_size=16, epochs=4, eval_every=1, checkpoint_every=1, progress=False,
               verbose=False, method="implicit")
    cfg.update(kw)
    return TrainConfig.from_dict(cfg)


def digits(tmp_path, **kw):
    cfg = dict(name="d", output_dir=str(tmp_path), dataset="digits", model="mlp", max_train_samples=320,
               max_test_samples=100, feature_dim=32, model_kwargs={"hidden": [64]}, batch_size=64, epochs=8,
               eval_every=100, checkpoint_every=0, progress=False, verbose=False, method="implicit")
    cfg.update(kw)
    return TrainConfig.from_dict(cfg)


def _untimed(row):
    return {k: v for k, v in row.items() if not k.startswith(("time_", "peak_", "wall_"))}


# ------------------------------------------------------------------------- training
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_trains_on_tiny_ufm(tmp_path, method):
    res = train_run(ufm(tmp_path, method=method, record_step_losses=True))
    losses = np.array(res["step_losses"])
    assert res["status"] == "completed" and len(losses) == 8 and np.isfinite(losses).all()
    assert losses[-2:].mean() < losses[:2].mean()
    final = res["final_eval"]
    for key in ("train_loss", "train_top1", "train_nc1", "train_nc2", "train_nc3", "train_equinorm",
                "train_ncc_mismatch", "train_cosine_margin_mean"):
        assert math.isfinite(final[key])
    assert res["stratified"] is True


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_trains_on_digits_mlp(tmp_path, method):
    res = train_run(digits(tmp_path, method=method, record_step_losses=True, eval_test=True))
    losses = np.array(res["step_losses"])
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean()
    assert {"train_top1", "test_top1", "test_top5", "test_nc1"} <= set(res["final_eval"])


def test_run_directory_contents_and_timing(tmp_path):
    res = train_run(ufm(tmp_path, epochs=2, amp=True))  # amp is a no-op on CPU
    run = Path(res["run_dir"])
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "train_loss_running", "train_top1", "train_nc1", "time_etf_forward_ms",
            "time_ddn_backward_ms", "time_backbone_ms", "peak_mem_gb"} <= set(header)
    assert rows[-1]["time_etf_forward_ms"] > 0 and rows[-1]["time_ddn_backward_ms"] > 0
    assert yaml.safe_load((run / "config.yaml").read_text())["method"] == "implicit"
    prov = json.loads((run / "provenance.json").read_text())
    for key in ("command", "config", "seed", "git", "date", "device_name", "torch", "python", "numpy"):
        assert key in prov
    assert {"commit", "dirty"} <= set(prov["git"])
    assert prov["status"] == "completed" and prov["wall_time_s"] > 0
    assert (run / "checkpoint.pt").exists() and (run / "results.json").exists()
    dist = res["cosine_margin_distribution"]["train"]
    assert dist["quantiles"]["min"] <= dist["quantiles"]["median"] <= dist["quantiles"]["max"]
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        Trainer(ufm(tmp_path, epochs=2)).fit()


# ----------------------------------------------------------------------- bad inputs
def test_bad_inputs_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="exceeds the feature dimension"):
        Trainer(ufm(tmp_path, num_classes=20, num_samples=40, feature_dim=8, batch_size=20))
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 2"):
        Trainer(ufm(tmp_path, batch_size=1))
    for key, value, pattern in (("method", "learned", "unknown method"), ("model", "resnet9", "unknown model"),
                                ("dataset", "svhn", "unknown dataset"), ("optimizer", "lion", "unknown optimizer"),
                                ("scheduler", "linear", "unknown scheduler"), ("ddn_backward", "auto", "ddn_backward")):
        with pytest.raises(ConfigError, match=pattern):
            Trainer(ufm(tmp_path, **{key: value}))
    with pytest.raises(ConfigError, match=r"unknown config key\(s\): bogus.*Valid keys are: .*batch_size"):
        load_config({"bogus": 1})
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, ["epoch=3"])
    with pytest.raises(ValueError, match=r"labels outside \[0, C\) with C=5: found label 9"):
        Trainer(digits(tmp_path, num_classes=5))
    with pytest.raises(ValueError, match="labels outside"):
        validate_labels(torch.tensor([0, 1, -1]), 3)
    assert not (tmp_path / "t").exists() and not (tmp_path / "d").exists()  # nothing was written


def test_config_loading_base_overrides_and_quick(tmp_path):
    (tmp_path / "parent.yaml").write_text("dataset: ufm\nmodel: ufm\nnum_classes: 3\nnum_samples: 30\n"
                                          "feature_dim: 8\nepochs: 7\nseeds: [0, 1, 2]\n")
    (tmp_path / "child.yaml").write_text("base: parent\nepochs: 9\nbatch_size: 30\n")
    cfg = load_config(tmp_path / "child.yaml", ["seeds=[4, 5]", "tau=2.5", "method=fixed"])
    assert (cfg.epochs, cfg.num_classes, cfg.batch_size, cfg.seeds, cfg.tau, cfg.method) == (9, 3, 30, [4, 5], 2.5, "fixed")
    assert parse_overrides(["lr=0.1", "amp=true", "run_dir=null"]) == {"lr": 0.1, "amp": True, "run_dir": None}
    (tmp_path / "bad.yaml").write_text("base: parent\nepohcs: 3\n")
    with pytest.raises(ConfigError, match="epohcs"):
        load_config(tmp_path / "bad.yaml")
    q = load_config("ufm1000", ["quick=true"]).apply_quick()
    assert q.epochs <= 3 and q.num_samples <= 4000 and len(q.seed_list) <= 2 and q.quick is False
    q.validate()


def test_experiment_configs_hold_the_paper_values():
    names = {p.stem for p in EXPERIMENT_CONFIGS}
    assert {"ufm10", "ufm100", "ufm200", "ufm1000", "cifar10_resnet18", "cifar10_vgg13", "cifar100_resnet50",
            "cifar100_vgg13", "stl10_resnet50", "stl10_vgg13", "imagenet_resnet50", "mnist5k_smallcnn",
            "digits_mlp", "mnist1d_mlp"} <= names
    for p in EXPERIMENT_CONFIGS:
        cfg = load_config(p)
        cfg.validate()
        cfg.replace(quick=True).apply_quick().validate()
        assert (cfg.optimizer, cfg.gain, cfg.tau, cfg.delta, cfg.stratified_batches) == ("agd", 10.0, 5.0, 1e-3, True)
        assert set(cfg.method_list) == {"standard", "fixed", "implicit"}
    sizes = {"ufm10": (10, 1000, 512), "ufm100": (100, 5000, 1024), "ufm200": (200, 5000, 1024),
             "ufm1000": (1000, 10000, 1024)}
    for name, (C, N, d) in sizes.items():
        cfg = load_config(name)
        assert (cfg.num_classes, cfg.num_samples, cfg.feature_dim, cfg.batch_size, cfg.epochs) == (C, N, d, N, 2000)
        assert cfg.seed_list == [0, 1, 2, 3, 4]
    for name in ("cifar10_resnet18", "cifar100_vgg13", "stl10_resnet50", "imagenet_resnet50"):
        cfg = load_config(name)
        assert (cfg.epochs, cfg.batch_size, cfg.report_epochs, len(cfg.seed_list)) == (200, 256, [50, 200], 5)
    assert load_config("imagenet_resnet50").ddn_backward == "none"
    assert load_config("cifar100_resnet50").ddn_backward == "closed_form"


# -------------------------------------------------------------------- resume / ckpts
@pytest.mark.parametrize("kind", ["ufm", "digits"])
def test_resume_is_bit_identical(tmp_path, kind):
    if kind == "ufm":
        make = lambda d, **kw: ufm(d, scheduler="cosine", epochs=4, checkpoint_every=2, record_step_losses=True, **kw)
    else:  # augmentation draws from the global torch RNG: exercises the RNG-state restore
        make = lambda d, **kw: digits(d, epochs=4, eval_every=1, checkpoint_every=2, record_step_losses=True,
                                      max_train_samples=192, **kw)
    straight = Trainer(make(tmp_path / "a"))
    res_a = straight.fit()
    first = Trainer(make(tmp_path / "b", stop_after_epoch=3))  # "killed" after epoch 3; last checkpoint: epoch 2
    assert first.fit()["status"] == "stopped"
    resumed = Trainer(make(tmp_path / "b", resume=True))
    res_b = resumed.fit()
    assert res_b["resumed_from_epoch"] == 2 and res_b["status"] == "completed"
    sa, sb = straight.network.state_dict(), resumed.network.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert res_a["step_losses"] == res_b["step_losses"]
    assert [_untimed(r) for r in res_a["history"]] == [_untimed(r) for r in res_b["history"]]
    rows = (Path(res_b["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3, 4]
    # The provenance names both processes: the interrupted one (its commit, command, date) and
    # the epoch from which the resumed one took over.
    prov = json.loads((Path(res_b["run_dir"]) / "provenance.json").read_text())
    (seg,) = prov["resumed_segments"]
    assert seg["until_epoch"] == 2 and seg["status"] == "stopped" and seg["date"] and "commit" in seg
    assert "resumed_segments" not in json.loads((Path(res_a["run_dir"]) / "provenance.json").read_text())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    tr = Trainer(ufm(tmp_path, epochs=1))
    tr.fit()
    path = tr.checkpoint_path
    before = path.read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("simulated crash during save")

    monkeypatch.setattr(torch, "save", crashing_save)
    tr.epoch = 99
    with pytest.raises(OSError, match="simulated crash"):
        tr.save_checkpoint()
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left
    assert torch.load(path, weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("method,check_every", [("implicit", 1), ("standard", 20)])
def test_nonfinite_stops_with_step_and_keeps_last_checkpoint(tmp_path, method, check_every):
    def poison(event, trainer):
        if event == "step_end" and trainer.global_step == 5:  # epoch 3, step 1
            with torch.no_grad():
                trainer.network.backbone.features.fill_(float("nan"))

    cfg = ufm(tmp_path, method=method, epochs=6, nonfinite_check_every=check_every)
    tr = Trainer(cfg, callbacks=[poison])
    with pytest.raises(NonFiniteError, match=r"epoch 3, step 2 of 2 \(global step 6\).*epoch 2\) is intact"):
        tr.fit()
    state = torch.load(tr.checkpoint_path, weights_only=True)
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    prov = json.loads((tr.run_dir / "provenance.json").read_text())
    assert prov["status"].startswith("failed")


def test_all_finite_flags_nan_and_inf():
    from guiding_nc.training.trainer import _all_finite

    x = torch.randn(30, 7)
    assert bool(_all_finite(x)) and bool(_all_finite(torch.empty(0, 3)))
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[11, 3] = bad
        assert not bool(_all_finite(y))


# ------------------------------------------------------------------------- sweeps
def test_multi_seed_summary_table(tmp_path):
    out = run_seeds(ufm(tmp_path, methods=["fixed", "implicit"], seeds=[0, 1, 2], epochs=2, checkpoint_every=0))
    assert len(out["runs"]) == 6
    rows = [r for r in out["summary"]["rows"] if r["metric"] == "train_top1@2"]
    assert {r["method"] for r in rows} == {"fixed", "implicit"}
    for r in rows:
        assert r["n"] == 3 and r["seeds"] == [0, 1, 2]
        assert r["min"] <= r["median"] <= r["max"]
        assert r["median"] == pytest.approx(float(np.median(r["values"])))
    assert "[" in out["summary"]["table"]["implicit"]["train_top1@2"]
    sdir = Path(out["summary_dir"])
    assert json.loads((sdir / "summary.json").read_text())["seeds"] == [0, 1, 2]
    assert (sdir / "summary.csv").read_text().startswith("method,metric,n,median,min,max")
    s = summarize_runs([("a", 0, {"x": 1.0}), ("a", 1, {"x": 3.0}), ("a", 2, {"x": 2.0})])
    assert (s["rows"][0]["median"], s["rows"][0]["min"], s["rows"][0]["max"]) == (2.0, 1.0, 3.0)


def test_cli(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "guiding_nc.training.train_command", "ufm10", "--quick", f"output_dir={tmp_path}",
           "methods=[implicit]", "seeds=[0]", "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[guiding_nc] ufm10 implicit seed=0 completed" in out.stdout
    assert (tmp_path / "ufm10" / "implicit" / "seed0" / "metrics.jsonl").exists()
    bad = subprocess.run(cmd + ["learning_rate=1"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "unknown config key(s): learning_rate" in bad.stderr


def test_single_method_and_seed_override_replace_the_files_lists():

    cfg = load_config("ufm10", ["method=implicit", "seed=3"])
    assert cfg.method_list == ["implicit"] and cfg.seed_list == [3]
    cfg = load_config("ufm10")
    assert cfg.method_list == ["standard", "fixed", "implicit"] and cfg.seed_list == [0, 1, 2, 3, 4]


def test_git_info_dirty_means_code_not_results(tmp_path):
    import subprocess

    from guiding_nc.training.provenance import git_info

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "init")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "mod.py").write_text("x = 1\n")
    git("add", "src/mod.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "code")
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "data" / "results").mkdir(parents=True)
    (tmp_path / "data" / "results" / "runs.csv").write_text("a\n")  # an output: not dirty
    assert git_info(tmp_path)["dirty"] is False
    # A committed result file that a grid rewrites after every run: still not dirty.
    git("add", "data/results/runs.csv")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "results")
    (tmp_path / "data" / "results" / "runs.csv").write_text("a\nb\n")
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "data" / "shipped.csv").write_text("z\n")  # other tracked files are not code
    git("add", "data/shipped.csv")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "data")
    (tmp_path / "data" / "shipped.csv").write_text("w\n")
    assert git_info(tmp_path)["dirty"] is False
    git("checkout", "-q", "data/shipped.csv")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "new.yaml").write_text("epochs: 3\n")  # a config: dirty
    assert git_info(tmp_path)["dirty"] is True
    (tmp_path / "configs" / "new.yaml").unlink()
    (tmp_path / "pyproject.toml").write_text("[project]\n")  # the pins: dirty
    assert git_info(tmp_path)["dirty"] is True
    (tmp_path / "pyproject.toml").unlink()
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "src" / "new.py").write_text("y = 2\n")  # untracked code: dirty
    assert git_info(tmp_path / "data")["dirty"] is True
    (tmp_path / "src" / "new.py").unlink()
    (tmp_path / "src" / "mod.py").write_text("x = 3\n")  # a tracked change: dirty
    assert git_info(tmp_path)["dirty"] is True


def test_evaluation_counts_dead_units_and_the_classifier_weight_on_them(tmp_path):
    t = Trainer(ufm(tmp_path, method="fixed-uncentred", eval_every=1))
    with torch.no_grad():
        t.network.backbone.features[:, :2] = 0.0  # two units silent on every sample
    metrics, _ = t.evaluate("train")
    assert metrics["dead_units"] == 2
    # The canonical ETF reads only the first C = 4 coordinates, each with the same squared weight.
    assert metrics["dead_weight"] == pytest.approx(0.5, abs=1e-6)
    t2 = Trainer(ufm(tmp_path / "b", method="fixed-uncentred"))
    assert t2.evaluate("train")[0]["dead_units"] == 0


def test_dotted_overrides_set_one_entry_of_a_mapping():
    cfg = load_config("digits_mlp", ["model_kwargs.feature_batch_norm=true"])
    assert cfg.model_kwargs == {"hidden": [128, 128], "feature_batch_norm": True}
    for bad in ("epochs.x=1", "nosuch.x=1"):
        with pytest.raises(ConfigError, match="mapping-valued"):
            load_config("digits_mlp", [bad])


class _Payload:
    """Unpickling this object would run code (here: create a file)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_a_crafted_checkpoint_is_refused_without_running(tmp_path):
    from guiding_nc.training.checkpoints import CheckpointError, read_checkpoint

    marker = tmp_path / "pwned"
    cfg = ufm(tmp_path, epochs=2, resume=True)
    tr = Trainer(cfg)
    tr.run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "guiding_nc.checkpoint/2", "payload": _Payload(marker)}, tr.checkpoint_path)
    with pytest.raises(CheckpointError, match="refused to load .*checkpoint.pt"):
        tr.fit()
    assert not marker.exists()
    # Truncated, empty and garbage files: one clear error naming the file.
    for content in (tr.checkpoint_path.read_bytes()[:50], b"", b"not a checkpoint at all"):
        tr.checkpoint_path.write_bytes(content)
        with pytest.raises(CheckpointError, match="cannot read the checkpoint .*checkpoint.pt"):
            read_checkpoint(tr.checkpoint_path)
    torch.save({"format": "something/else"}, tr.checkpoint_path)
    with pytest.raises(CheckpointError, match="not a guiding_nc.checkpoint/2 checkpoint"):
        read_checkpoint(tr.checkpoint_path)


def test_checkpoints_load_with_weights_only_and_resume_bit_identically(tmp_path):
    full = train_run(ufm(tmp_path / "a", epochs=4, checkpoint_every=1))
    cfg = ufm(tmp_path / "b", epochs=4, checkpoint_every=1, stop_after_epoch=2)
    train_run(cfg)
    state = torch.load(Path(tmp_path / "b" / "t" / "implicit" / "seed0" / "checkpoint.pt"), weights_only=True)
    assert state["epoch"] == 2 and isinstance(state["rng"]["python"]["state"], torch.Tensor)
    resumed = train_run(cfg.replace(stop_after_epoch=None, resume=True))
    assert _untimed(resumed["final_eval"]) == _untimed(full["final_eval"])


def test_a_killed_run_resumes_with_every_process_counted_and_a_finished_one_reports_the_same(tmp_path):
    cfg = ufm(tmp_path, epochs=4, checkpoint_every=1, save_margins=True)
    full = train_run(cfg.replace(run_dir=str(tmp_path / "full")))
    train_run(cfg.replace(stop_after_epoch=2))
    run_dir = tmp_path / "t" / "implicit" / "seed0"
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["wall_time_at_checkpoint_s"] > 0 and prov["checkpoint_epoch"] == 2
    prov["status"] = "running"  # what a process killed after its checkpoint leaves behind
    (run_dir / "provenance.json").write_text(json.dumps(prov))
    (run_dir / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half")  # and the temp file it was writing
    resumed = train_run(cfg.replace(resume=True))
    assert not list(run_dir.glob(".*.tmp"))
    seg = json.loads((run_dir / "provenance.json").read_text())["resumed_segments"]
    assert [s["status"] for s in seg] == ["killed"] and seg[0]["until_epoch"] == 2
    assert resumed["wall_time_s"] == pytest.approx(resumed["wall_time_this_process_s"] + seg[0]["wall_time_s"])
    assert _untimed(resumed["final_eval"]) == _untimed(full["final_eval"])
    # Resuming the finished run trains nothing and reports the same numbers, margins included.
    again = train_run(cfg.replace(resume=True))
    assert again["status"] == "completed" and _untimed(again["final_eval"]) == _untimed(full["final_eval"])
    assert again["cosine_margin_distribution"] == full["cosine_margin_distribution"]
    assert again["wall_time_s"] >= resumed["wall_time_s"]
