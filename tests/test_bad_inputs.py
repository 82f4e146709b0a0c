"""Every bad input gets one clear line and an exit status, and nothing is written.

A table per category, each row an input and a fragment that the one-line message must contain
(the setting, file or parameter at fault, and what it accepts or how to fix it):

* ``CLI_ROWS`` / ``ARGPARSE_ROWS`` / ``REPRODUCE_ROWS`` -- command lines and configurations
  (exit status 2);
* ``LIBRARY_ROWS`` -- bad arguments of the library's public functions (a one-line exception);
* ``DIVERGENCE_ROWS`` -- training that goes non-finite (exit status 3);
* ``FILE_ROWS`` -- damaged or misplaced files: configs, checkpoints, provenance, experiment
  files, result and output directories (exit status 2, or 4 for a missing dataset); the message
  names the file and the fix;
* ``FAULT_ROWS`` -- the process's faults: absurd thread counts (which crashed the OpenMP runtime
  without a word), Ctrl-C (exit status 130, one line, the run recorded as ``killed``), a full,
  read-only or refusing disk, over-long file names;
* ``NOTEBOOK_ROWS`` -- ``python -m guiding_nc.notebooks`` parameters, checked before any page runs.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import guiding_nc as gnc
from guiding_nc.core.methods import build_head
from guiding_nc.experiments import notebooks, runner
from guiding_nc.training.train_command import main as train_main

ROOT = Path(__file__).resolve().parents[1]
UFM = ["ufm10", "epochs=1", "num_samples=40", "feature_dim=16", "batch_size=40", "progress=false"]
DIGITS = ["digits_mlp", "epochs=1", "max_test_samples=50", "progress=false"]
LONG = "a" * 300  # a path component longer than any file system allows (255 bytes)


def _written(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _one_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text, text
    return lines[0]


def _err_line(capsys):
    return _one_line(capsys.readouterr().err)


# =================================================================== CLI and configs
CLI_ROWS = [
    # types
    (UFM + ["lr=abc"], "lr must be a number"),
    (UFM + ["lr=1e-5e"], "lr must be a number"),
    (UFM + ["betas=abc"], "betas must be a list of numbers"),
    (UFM + ["betas=[true, 0.9]"], "betas[0] must be a number, got True"),
    (UFM + ["ema_floor=abc"], "ema_floor must be a number"),
    (UFM + ["solver_max_iterations=abc"], "solver_max_iterations must be an integer"),
    (UFM + ["report_epochs=abc"], "report_epochs must be a list of integers"),
    (UFM + ["epochs=true"], "epochs must be an integer"),
    (UFM + ["epochs=1.5"], "epochs must be an integer"),
    (UFM + ["seed=1.5"], "seed must be an integer"),
    (UFM + ["seeds=abc"], "seeds must be a list of integers"),
    (UFM + ["split_seed=abc"], "split_seed must be an integer"),
    (UFM + ["model_kwargs=abc"], "model_kwargs must be a mapping"),
    (UFM + ["delta=true"], "delta must be a number, got True"),
    (UFM + ["tau=false"], "tau must be a number, got False"),
    (UFM + ["num_threads=true"], "num_threads must be an integer or null, got True"),
    (UFM + ["batch_size=true"], "batch_size must be an integer, got True"),
    (UFM + ["batch_size=2.5"], "batch_size must be an integer"),
    (UFM + ["amp=maybe"], "amp must be true or false"),
    (UFM + ["progress=2"], "progress must be true or false"),
    (UFM + ["head_bias=1"], "head_bias must be true or false"),
    (UFM + ["final_activation=maybe"], "final_activation must be true or false or null"),
    (UFM + ["description=[1]"], "description must be a string"),
    (UFM + ["name="], "name must be a string, got null"),
    (UFM + ["seeds=[0,"], "override seeds: '[0,' is not a valid YAML value"),
    (UFM + ["epochs"], "override 'epochs' is not of the form key=value"),
    (UFM + ["=3"], "override '=3' has an empty key"),
    (UFM + ["nosuch_key=1"], "unknown config key(s): nosuch_key"),
    (UFM + ["epochs.x=1"], "only a mapping-valued key takes a dotted entry"),
    # ranges
    (UFM + ["betas=[0.9]"], "betas must be a list of 2 items"),
    (UFM + ["betas=[0.9, 1.0]"], "betas[1] must be a number in [0, 1)"),
    (UFM + ["betas=[0.9, 0.99, 0.9]"], "betas must be a list of 2 items"),
    (UFM + ["ema_floor=2"], "ema_floor must be a number in (0, 1]"),
    (UFM + ["ema_floor=0"], "ema_floor must be a number in (0, 1]"),
    (UFM + ["report_epochs=[0]"], "report_epochs[0] must be a positive integer"),
    (UFM + ["report_epochs=[1, 1]"], "report_epochs must be a list of items"),
    (UFM + ["epochs=0"], "epochs must be a positive integer"),
    (UFM + ["seed=-1"], "seed must be an integer from 0 to 4294967295"),
    (UFM + ["seed=4294967296"], "seed must be an integer from 0 to 4294967295"),
    (UFM + ["split_seed=-1"], "split_seed must be an integer from 0"),
    (UFM + ["etf_seed=-1"], "etf_seed must be an integer from 0 to 4294967295 or null"),
    (UFM + ["batch_size=1"], "batch_size must be an integer >= 2"),
    (UFM + ["eval_batch_size=0"], "eval_batch_size must be a positive integer or null"),
    (UFM + ["num_workers=-1"], "num_workers must be an integer from 0 to"),
    (UFM + ["num_workers=100000"], "num_workers must be an integer from 0 to"),
    (UFM + ["tau=-1"], "tau must be a number in (0, 10000]"),
    (UFM + ["tau=0"], "tau must be a number in (0, 10000]"),
    (UFM + ["tau=inf"], "tau must be a number in (0, 10000]"),
    (UFM + ["tau=1e9"], "tau must be a number in (0, 10000]"),
    (UFM + ["delta=0"], "delta must be a number in (0, 1e+06]"),
    (UFM + ["delta=-1e-3"], "delta must be a number in (0, 1e+06]"),
    (UFM + ["delta=1e300"], "delta must be a number in (0, 1e+06]"),
    (UFM + ["delta=nan"], "delta must be a number in (0, 1e+06]"),
    (UFM + ["num_threads=0"], "num_threads must be an integer from 1 to"),
    (UFM + ["eval_every=0"], "eval_every must be a positive integer"),
    (UFM + ["checkpoint_every=-1"], "checkpoint_every must be an integer >= 0"),
    (UFM + ["nonfinite_check_every=0"], "nonfinite_check_every must be a positive integer"),
    (UFM + ["warmup_steps=-1"], "warmup_steps must be an integer >= 0"),
    (UFM + ["solver_max_iterations=0"], "solver_max_iterations must be an integer from 1 to 10000"),
    (UFM + ["solver_max_iterations=100000"], "solver_max_iterations must be an integer from 1 to 10000"),
    (UFM + ["stop_after_epoch=0"], "stop_after_epoch must be a positive integer or null"),
    (UFM + ["optimizer=adam", "lr=-1"], "lr must be a number in (0, 1e+06]"),
    (UFM + ["optimizer=sgd", "lr=0"], "lr must be a number in (0, 1e+06]"),
    (UFM + ["optimizer=sgd", "lr=nan"], "lr must be a number in (0, 1e+06]"),
    (UFM + ["weight_decay=-1"], "weight_decay must be a number in [0, 1000]"),
    (UFM + ["weight_decay=nan"], "weight_decay must be a number in [0, 1000]"),
    (UFM + ["momentum=-0.5"], "momentum must be a number in [0, 1)"),
    (UFM + ["optimizer=sgd", "momentum=1e10"], "momentum must be a number in [0, 1)"),
    (UFM + ["optimizer=sgd", "momentum=1"], "momentum must be a number in [0, 1)"),
    (UFM + ["gain=-1"], "gain must be a number in [0, 1e+06]"),
    (UFM + ["gain=inf"], "gain must be a number in [0, 1e+06]"),
    (UFM + ["feature_dim=-3"], "feature_dim must be a positive integer"),
    (UFM + ["num_samples=0"], "num_samples must be a positive integer"),
    (UFM + ["num_classes=1"], "num_classes must be an integer >= 2"),
    (DIGITS + ["max_train_samples=-5"], "max_train_samples must be a positive integer"),
    (DIGITS + ["max_test_samples=0"], "max_test_samples must be a positive integer"),
    # choices
    (UFM + ["method=nosuch"], "unknown method 'nosuch'; choose one of standard"),
    (UFM + ["methods=[standard, nosuch]"], "unknown method 'nosuch'"),
    (UFM + ["optimizer=nosuch"], "unknown optimizer 'nosuch'; choose one of agd, sgd, adam"),
    (UFM + ["scheduler=nosuch"], "unknown scheduler 'nosuch'; choose one of"),
    (UFM + ["model=nosuch"], "unknown model 'nosuch'; choose one of ufm"),
    (UFM + ["dataset=nosuch"], "unknown dataset 'nosuch'; choose one of ufm"),
    (UFM + ["ddn_backward=nosuch"], "unknown ddn_backward 'nosuch'; choose one of closed_form, kkt, none"),
    (UFM + ["solver=nosuch"], "unknown solver 'nosuch'; choose one of closed_form, trust_region"),
    (UFM + ["solve_dtype=float16"], "solve_dtype must be one of float32, float64"),
    (UFM + ["amp_dtype=float32"], "amp_dtype must be one of bfloat16, float16"),
    (UFM + ["timing=never"], "timing must be one of events, sync, off"),
    (UFM + ["eval_cache=maybe"], "eval_cache must be one of auto, true, false, got 'maybe'"),
    (UFM + ["eval_cache=1"], "eval_cache must be one of auto, true, false, got 1"),
    (UFM + ["protocol=nosuch"], "protocol must be one of one_switch, paper"),
    (UFM + ["standard_sampler=random"], "standard_sampler must be one of stratified, shuffled or null"),
    (UFM + ["implicit_centring=nosuch"], "implicit_centring must be one of"),
    (UFM + ["implicit_class_means=nosuch"], "implicit_class_means must be one of"),
    (UFM + ["agd_depth=deep"], "agd_depth must be one of trainable, layers or null"),
    (UFM + ["device=nosuch"], "invalid device 'nosuch'"),
    (UFM + ["device=cuda:x"], "invalid device 'cuda:x'"),
    (["nosuch_config"], "config 'nosuch_config' not found"),
    # lists that would silently fall back to one default
    (UFM + ["methods=[]"], "methods must be a non-empty list"),
    (UFM + ["seeds=[]"], "seeds must be a non-empty list"),
    (UFM + ["seeds=[0, 0]"], "(0 is repeated)"),
    (UFM + ["methods=[implicit, implicit]"], "('implicit' is repeated)"),
    # names and paths
    (UFM + ["name=../../x"], "name must be a plain name"),
    (UFM + ["name=a/b"], "name must be a plain name"),
    (UFM + [f"name={LONG}"], "name is 300 bytes long"),
    (UFM + [f"output_dir=/tmp/{LONG}"], "output_dir has a path component of 300 bytes"),
    (UFM + [f"run_dir=/tmp/{LONG}/run", "method=implicit", "seed=0"], "run_dir has a path component of 300 bytes"),
    (UFM + [f"data_root=/tmp/{LONG}"], "data_root has a path component of 300 bytes"),
    # settings that contradict each other
    (UFM + ["head_bias=true"], "head_bias=true conflicts with optimizer 'agd'"),
    (UFM + ["resume=true", "overwrite=true"], "resume=true and overwrite=true contradict each other"),
    (UFM + ["report_epochs=[500]"], "report_epochs [500] lie beyond epochs=1"),
    (UFM + ["stop_after_epoch=9"], "stop_after_epoch=9 lies beyond epochs=1"),
    (UFM + ["feature_dim=4"], "num_classes=10 exceeds the feature dimension feature_dim=4"),
    (UFM + ["num_classes=null"], "a UFM run needs num_classes, num_samples and feature_dim"),
    (UFM + ["model=mlp"], "model 'ufm' goes with dataset 'ufm'"),
    (DIGITS + ["dataset=ufm"], "model 'ufm' goes with dataset 'ufm'"),
    (UFM + ["run_dir=/tmp/x", "methods=[standard, implicit]"], "run_dir names a single run"),
    (UFM + ["model_kwargs.final_activation=false"], "set final_activation (a protocol option)"),
    (UFM + ["model_kwargs.init=zeros"], "unknown UFM init 'zeros'; choose one of gaussian, mean_free"),
    # --print-config checks before it prints
    (UFM + ["--print-config", "delta=-1"], "delta must be a number in (0, 1e+06]"),
    (UFM + ["--print-config", "report_epochs=[5]"], "report_epochs [5] lie beyond epochs=1"),
    (UFM + ["--print-config", "eval_cache=maybe"], "eval_cache must be one of auto, true, false"),
]

ARGPARSE_ROWS = [
    (["ufm10", "--nosuch-flag"], "unrecognized arguments: --nosuch-flag"),
    (["ufm10", "--config", "ufm100"], "two configs given, 'ufm10' and --config 'ufm100'; give one"),
    (["ufm10", "--device"], "argument --device: expected one argument"),
]


@pytest.mark.parametrize("argv,expected", CLI_ROWS, ids=[" ".join(a[-2:]) for a, _ in CLI_ROWS])
def test_bad_training_command_lines(tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    out.mkdir()
    assert train_main(argv + [f"output_dir={out}"] if not any(a.startswith("output_dir=") for a in argv)
                      else argv) == 2
    line = _err_line(capsys)
    assert line.startswith("error: ") and expected in line, line
    assert _written(out) == []
    assert capsys.readouterr().out == ""  # --print-config printed nothing


@pytest.mark.parametrize("argv,expected", ARGPARSE_ROWS, ids=[" ".join(a) for a, _ in ARGPARSE_ROWS])
def test_bad_training_command_lines_exit_2_through_argparse(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        train_main(argv)  # argparse stops before anything is read or written
    assert exc.value.code == 2
    assert expected in _err_line(capsys)


def test_print_config_prints_valid_settings(capsys):
    assert train_main(UFM + ["--print-config", "report_epochs=[1]"]) == 0
    assert "report_epochs:\n- 1\n" in capsys.readouterr().out


REPRODUCE_ROWS = [
    (["nosuch"], "no experiment 'nosuch'"),
    (["ufm10", "--quick", "--configs", "ufm99"], "has no config ufm99"),
    (["ufm10", "--quick", "--methods", "foo"], "has no method foo"),
    (["ufm10", "--quick", "--variants", "foo"], "has no variant foo"),
    (["ufm10", "--quick", "--threads", "0"], "--threads must be an integer from 1 to"),
    (["ufm10", "--quick", "epoch=3"], "unknown config key(s): epoch"),
    (["ufm10", "--quick", "delta=abc"], "delta must be a number"),
    (["ufm10", "--quick", "delta=1e300"], "delta must be a number in (0, 1e+06]"),
    (["ufm10", "--quick", "delta=true"], "delta must be a number, got True"),
    (["ufm10", "--quick", "momentum=1e10"], "momentum must be a number in [0, 1)"),
    (["ufm10", "--quick", "eval_cache=maybe"], "eval_cache must be one of auto, true, false"),
    (["ufm10", "--quick", "tau=0"], "tau must be a number in (0, 10000]"),
    (["ufm10", "--quick", "seeds=[0,"], "is not a valid YAML value"),
    (["ufm10", "--quick", "resume=true"], "resume=true cannot be an override"),
    (["ufm10", "--quick", "num_threads=5000"], "num_threads=5000 cannot be an override"),
    (["ufm10", "--quick", "--device", "nosuch"], "invalid device 'nosuch'"),
    (["ufm10", "--quick", "--seeds", "x"], "argument --seeds: invalid int value"),
    (["ufm10", "--quick", "--threads", "x"], "argument --threads: invalid int value"),
    (["ufm10", "--quick", "stray"], "unrecognised argument(s) stray"),
    ([], "name an experiment (see --list)"),
]


@pytest.mark.parametrize("argv,expected", REPRODUCE_ROWS, ids=[" ".join(a) for a, _ in REPRODUCE_ROWS])
def test_bad_experiment_command_lines(tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    try:
        code = runner.main(argv + ["--out", str(out), "--work-dir", str(tmp_path / "work"), "--no-progress"])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    line = _err_line(capsys)
    assert line.startswith("error: ") and expected in line, line
    assert not out.exists() and not (tmp_path / "work").exists()


# =================================================================== the library
F64 = torch.float64
H = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
H = H - H.mean(1, keepdim=True)
P = gnc.canonical_point(8, 3, dtype=F64)


def _metrics(**kw):
    from guiding_nc.core.metrics import neural_collapse_metrics

    feats, labels = torch.randn(6, 8, dtype=F64), torch.tensor([0, 1, 2, 0, 1, 2])
    args = dict(num_classes=3)
    args.update(kw)
    return neural_collapse_metrics([(feats, labels)], gnc.etf_classifier(P), **args)


def _formula(name, *args):
    from guiding_nc.core import metric_formulas

    return getattr(metric_formulas, name)(*args)


LIBRARY_ROWS = [
    # nearest_etf
    (lambda: gnc.nearest_etf(H, gnc.canonical_point(8, 3, dtype=torch.float32)), ValueError, "prox has dtype"),
    (lambda: gnc.nearest_etf(torch.full((8, 3), float("nan"), dtype=F64), method="trust_region", check=False),
     ValueError, "non-finite"),
    (lambda: gnc.nearest_etf(torch.full((8, 3), float("inf"), dtype=F64)), ValueError, "H contains non-finite"),
    (lambda: gnc.nearest_etf(H[:, 0]), ValueError, "(d, C) matrix"),
    (lambda: gnc.nearest_etf(H[:2]), ValueError, "d >= number of classes"),
    (lambda: gnc.nearest_etf(H[:, :1]), ValueError, "at least 2 classes"),
    (lambda: gnc.nearest_etf(H.numpy()), TypeError, "H must be a torch.Tensor"),
    (lambda: gnc.nearest_etf(H, P.numpy()), TypeError, "prox must be a torch.Tensor or None"),
    (lambda: gnc.nearest_etf(H, P[:5]), ValueError, "prox has shape (5, 3)"),
    (lambda: gnc.nearest_etf(H, delta=-1.0), ValueError, "delta must be a number in [0, 1e+06]"),
    (lambda: gnc.nearest_etf(H, delta=1e300), ValueError, "delta must be a number in [0, 1e+06]"),
    (lambda: gnc.nearest_etf(H, delta=float("nan")), ValueError, "delta must be a number in [0, 1e+06]"),
    (lambda: gnc.nearest_etf(H, delta=True), TypeError, "delta must be a number in [0, 1e+06], got True"),
    (lambda: gnc.nearest_etf(H, method="newton"), ValueError, "unknown method 'newton'"),
    (lambda: gnc.nearest_etf(H, backward="magic"), ValueError, "unknown backward 'magic'"),
    (lambda: gnc.nearest_etf(H, polar="qr"), ValueError, "unknown polar method 'qr'"),
    (lambda: gnc.nearest_etf(H, max_iterations=0), ValueError, "max_iterations must be an integer from 1 to 10000"),
    (lambda: gnc.nearest_etf(H, max_iterations=True), TypeError, "max_iterations must be an integer"),
    (lambda: gnc.nearest_etf(H, check="yes"), TypeError, "check must be true or false"),
    (lambda: gnc.nearest_etf(H, return_prox=1), TypeError, "return_prox must be true or false"),
    (lambda: gnc.nearest_etf(H, polar_state=3), TypeError, "polar_state must be a NewtonSchulzState or None"),
    (lambda: gnc.nearest_etf(H, 2 * P), ValueError, "point of the Stiefel manifold"),
    (lambda: gnc.nearest_etf(H.long()), TypeError, "floating-point"),
    (lambda: gnc.nearest_etf(H.requires_grad_(False).clone().requires_grad_(), P, 0.0), ValueError,
     "delta = 0 has a whole family of minimisers"),
    # NearestETF
    (lambda: gnc.NearestETF(8, 3, delta=0.0), ValueError, "delta must be a number in (0, 1e+06]"),
    (lambda: gnc.NearestETF(8, 3, delta=True), TypeError, "delta must be a number in (0, 1e+06]"),
    (lambda: gnc.NearestETF(8, 3, delta=1e300), ValueError, "delta must be a number in (0, 1e+06]"),
    (lambda: gnc.NearestETF(8, 3, delta=float("nan")), ValueError, "delta must be a number in (0, 1e+06]"),
    (lambda: gnc.NearestETF(2, 3), ValueError, "dim must be an integer >= 3"),
    (lambda: gnc.NearestETF(8.0, 3), TypeError, "dim must be an integer >= 3"),
    (lambda: gnc.NearestETF(8, True), TypeError, "num_classes must be an integer >= 2 (a simplex ETF needs at least 2 classes), got True"),
    (lambda: gnc.NearestETF(8, 1), ValueError, "num_classes must be an integer >= 2"),
    (lambda: gnc.NearestETF(8, 3, method="x"), ValueError, "unknown method 'x'"),
    (lambda: gnc.NearestETF(8, 3, backward="x"), ValueError, "unknown backward 'x'"),
    (lambda: gnc.NearestETF(8, 3, max_iterations=-1), ValueError, "max_iterations must be an integer from 1"),
    (lambda: gnc.NearestETF(8, 3, check="no"), TypeError, "check must be true or false or None"),
    (lambda: gnc.NearestETF(8, 3, polar="x"), ValueError, "unknown polar method 'x'"),
    (lambda: gnc.NearestETF(8, 3)(torch.zeros(8, 4)), ValueError, "NearestETF expects class means of shape (8, 3)"),
    # the ETF helpers
    (lambda: gnc.etf_classifier(H), ValueError, "U must be a point of the Stiefel manifold"),
    (lambda: gnc.etf_classifier(torch.eye(2, 3)), ValueError, "U must be (d, C) with d >= C"),
    (lambda: gnc.etf_classifier(torch.eye(3, dtype=torch.long)), TypeError, "U must be a floating-point tensor"),
    (lambda: gnc.etf_classifier(np.eye(3)), TypeError, "U must be a torch.Tensor"),
    (lambda: gnc.etf_classifier(torch.ones(3)), ValueError, "U must be a (d, C) matrix"),
    (lambda: gnc.etf_classifier(P, check=1), TypeError, "check must be true or false"),
    (lambda: gnc.simplex_etf(3, 2), ValueError, "needs feature dimension d >= C"),
    (lambda: gnc.canonical_point(4, True), TypeError, "num_classes must be an integer >= 2 (a simplex ETF needs at least 2 classes), got True"),
    (lambda: gnc.canonical_point(2, 3), ValueError, "needs feature dimension d >= C"),
    (lambda: gnc.polar_factor(H, "qr"), ValueError, "unknown polar method 'qr'"),
    # heads
    (lambda: build_head("learned", 8, 3), ValueError, "unknown method 'learned'"),
    (lambda: build_head("implicit", 8, 3, tau=0), ValueError, "tau must be a number in (0, 10000]"),
    (lambda: build_head("implicit", 8, 3, tau=True), TypeError, "tau must be a number in (0, 10000], got True"),
    (lambda: build_head("implicit", 8, 3, delta=True), TypeError, "delta must be a number in (0, 1e+06]"),
    (lambda: build_head("implicit", 8, 3, delta=0.0), ValueError, "delta must be a number in (0, 1e+06]"),
    (lambda: build_head("implicit", 8, 3, ddn_backward="x"), ValueError, "unknown ddn_backward 'x'"),
    (lambda: build_head("implicit", 8, 3, solver="x"), ValueError, "unknown solver 'x'"),
    (lambda: build_head("implicit", 8, 3, ema_floor=0.0), ValueError, "ema_floor must be a number in (0, 1]"),
    (lambda: build_head("implicit", 8, 3, centring="x"), ValueError, "centring must be one of"),
    (lambda: build_head("implicit", 8, 3, class_means="x"), ValueError, "class_means must be one of"),
    (lambda: build_head("fixed-random", 8, 3, etf_seed=-1), ValueError, "etf_seed must be an integer >= 0"),
    (lambda: build_head("standard", 8, 3, head_bias=1), TypeError, "head_bias must be true or false"),
    (lambda: build_head("implicit", 8, 3, max_iterations=0), ValueError, "max_iterations must be an integer from 1"),
    (lambda: build_head("implicit", 8, 3, solve_dtype=torch.float16), ValueError,
     "solve_dtype must be torch.float32 or torch.float64"),
    (lambda: build_head("standard", 2, 3), ValueError, "exceeds the feature dimension"),
    (lambda: build_head("standard", 8.5, 3), TypeError, "feature_dim must be a positive integer"),
    (lambda: build_head("standard", 8, True), TypeError, "num_classes must be an integer >= 2 (a simplex ETF needs at least 2 classes), got True"),
    # metrics
    (lambda: _metrics(empty_classes="x"), ValueError, "empty_classes must be one of error, nan"),
    (lambda: _metrics(num_classes=True), TypeError, "num_classes must be an integer >= 2, got True"),
    (lambda: _metrics(num_classes=4), ValueError, "W has 3 rows but num_classes = 4"),
    (lambda: _metrics(check="yes"), TypeError, "check must be true or false"),
    (lambda: _formula("cross_entropy_lower_bound", 10, -1.0), ValueError, "tau must be a number in (0, 10000]"),
    (lambda: _formula("cross_entropy_lower_bound", True, 5.0), TypeError, "num_classes must be an integer >= 2"),
    (lambda: _formula("max_cosine_margin", 1), ValueError, "num_classes must be an integer >= 2"),
]


@pytest.mark.parametrize("call,error,expected", LIBRARY_ROWS, ids=[r[2] for r in LIBRARY_ROWS])
def test_bad_library_calls(call, error, expected):
    with pytest.raises(error) as exc:
        call()
    assert expected in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


# =================================================================== divergence
# Unnormalised features, a huge step, no momentum: the loss overflows within a few steps.
DIVERGE = UFM[:-1] + ["method=standard-no-norm", "seed=0", "optimizer=sgd", "momentum=0", "weight_decay=0",
                      "nonfinite_check_every=1", "progress=false", "epochs=5"]
DIVERGENCE_ROWS = [
    (DIVERGE + ["lr=1e6"], "non-finite loss, features or parameters at epoch"),
    (DIVERGE + ["lr=1e6", "checkpoint_every=1"], "non-finite loss, features or parameters"),
    (DIVERGE + ["lr=1e5", "batch_size=20"], "training stopped"),
]


@pytest.mark.parametrize("argv,expected", DIVERGENCE_ROWS, ids=[" ".join(a[-2:]) for a, _ in DIVERGENCE_ROWS])
def test_divergence_stops_with_one_line_and_status_3(tmp_path, capsys, argv, expected):
    assert train_main(argv + [f"output_dir={tmp_path}"]) == 3
    line = _err_line(capsys)
    assert line.startswith("error: ") and expected in line, line


# =================================================================== files
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch UFM run: its directory (checkpoint, provenance) to copy and damage."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert train_main(UFM + ["method=implicit", "seed=0", f"run_dir={run}", "verbose=false"]) == 0
    assert (run / "checkpoint.pt").is_file() and (run / "provenance.json").is_file()
    return run


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _damage_checkpoint(change):
    def make(tmp, finished):
        run = _copy_run(finished, tmp / "run")
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        change(state)
        torch.save(state, run / "checkpoint.pt")
        return UFM + ["method=implicit", "seed=0", f"run_dir={run}", "resume=true"]
    return make


def _wrong_shape(state):
    key = next(k for k, v in state["model"].items() if torch.is_tensor(v) and v.ndim == 2)
    state["model"][key] = torch.zeros(3, 3)


def _write(tmp, name, text):
    p = tmp / name
    p.write_text(text)
    return p


def _config_file(text):
    return lambda tmp, _: [str(_write(tmp, "bad.yaml", text)), "progress=false"]


def _experiment_file(text):
    return lambda tmp, _: ["reproduce", str(_write(tmp, "exp.yaml", text)), "--quick"]


def _results_dir(provenance, runs_csv="config,variant,method,seed\n"):
    def make(tmp, _):
        out = tmp / "res"
        out.mkdir()
        (out / "provenance.json").write_text(provenance)
        (out / "runs.csv").write_text(runs_csv)
        return ["reproduce", "ufm10", "--quick", "--out", str(out)]
    return make


def _with_provenance(text):
    def make(tmp, finished):
        run = _copy_run(finished, tmp / "run")
        (run / "provenance.json").write_text(text)
        return UFM + ["method=implicit", "seed=0", f"run_dir={run}", "resume=true"]
    return make


def _binary_config(tmp, _):
    (tmp / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    return [str(tmp / "bin.yaml")]


def _garbage_checkpoint(tmp, _):
    (tmp / "run").mkdir()
    (tmp / "run" / "checkpoint.pt").write_bytes(b"garbage")
    return UFM + ["method=implicit", "seed=0", f"run_dir={tmp / 'run'}", "resume=true"]


def _pickled_checkpoint(tmp, finished):
    import argparse

    run = _copy_run(finished, tmp / "run")
    torch.save({"format": "x", "payload": argparse.Namespace(a=1)}, run / "checkpoint.pt")
    return UFM + ["method=implicit", "seed=0", f"run_dir={run}", "resume=true"]


def _out_is_a_file(flag):
    def make(tmp, _):
        f = _write(tmp, "a_file", "x")
        return ["reproduce", "ufm10", "--quick", flag, str(f)]
    return make


FILE_ROWS = [
    (_config_file("epochs: [1, 2\nname: x\n"), 2, ["is not valid YAML (line", "bad.yaml", "fix the file"]),
    (_config_file("- 1\n- 2\n"), 2, ["bad.yaml must contain a mapping of key: value, got a list"]),
    (_config_file("base: ufm10\nepoch: 3\n"), 2, ["bad.yaml: unknown config key(s) epoch; fix the file"]),
    (_config_file("base: ufm10\nepochs: many\n"), 2, ["bad.yaml: epochs must be an integer", "fix the file"]),
    (_config_file("base: ufm10\nstratified: true\n"), 2, ["bad.yaml: stratified is now per method"]),
    (_config_file("base: nosuch_base\n"), 2, ["config 'nosuch_base' not found"]),
    (lambda tmp, _: [str(_write(tmp, "loop.yaml", "base: loop.yaml\nepochs: 1\n"))], 2, ["circular 'base:' chain"]),
    (_binary_config, 2, ["bin.yaml is not a text (UTF-8) file"]),
    (_garbage_checkpoint, 2, ["cannot read the checkpoint", "delete it or pass overwrite=true"]),
    (_damage_checkpoint(lambda s: s.pop("model")), 2, ["has no 'model' entry", "delete it or pass overwrite=true"]),
    (_damage_checkpoint(lambda s: s.pop("epoch")), 2, ["has no 'epoch' entry"]),
    (_damage_checkpoint(_wrong_shape), 2, ["does not fit this run's model or optimiser", "overwrite=true"]),
    (_damage_checkpoint(lambda s: s.update(epoch=99)), 2, ["written at epoch 99 of a run of 1",
                                                          "delete it or pass overwrite=true"]),
    (_damage_checkpoint(lambda s: s.update(global_step=-4)), 2, ["holds a step count -4"]),
    (_damage_checkpoint(lambda s: s.update(format="other/1")), 2, ["is not a guiding_nc.checkpoint/2 checkpoint"]),
    (_damage_checkpoint(lambda s: s.update(epoch="x")), 2, ["written at epoch 'x'"]),
    (_damage_checkpoint(lambda s: s.update(config="garbage")), 2, ["records no settings", "overwrite=true"]),
    (_pickled_checkpoint, 2, ["refused to load", "it asks to import argparse.Namespace"]),
    (lambda tmp, fin: UFM + ["method=implicit", "seed=0", f"run_dir={_copy_run(fin, tmp / 'run')}"], 2,
     ["already holds a checkpoint; pass resume=true to continue it or overwrite=true"]),
    (_with_provenance("[1, 2]"), 2, ["provenance.json holds a list, not a run's provenance record",
                                     "delete it"]),
    (lambda tmp, _: UFM + ["method=implicit", "seed=0", f"output_dir={_write(tmp, 'f', 'x')}"], 2,
     ["cannot write", "choose a directory you can write to"]),
    (_out_is_a_file("--out"), 2, ["--out", "a_file is a file, not a directory: name a directory"]),
    (_out_is_a_file("--work-dir"), 2, ["--work-dir", "a_file is a file, not a directory"]),
    (lambda tmp, _: ["reproduce", "ufm10", "--quick", "--out", f"{tmp}/{LONG}"], 2, ["a file name is too long"]),
    (_experiment_file("configs: [ufm10\n"), 2, ["exp.yaml is not valid YAML (line", "fix the file"]),
    (_experiment_file("configs: [ufm10]\nvariants: [a, b]\n"), 2, ["exp.yaml: variants must be a mapping",
                                                                  "fix the file"]),
    (_experiment_file("configs: ufm10\n"), 2, ["exp.yaml: configs must be a non-empty list"]),
    (_experiment_file("configs: [ufm10]\nseeds: [0, true]\n"), 2, ["seeds[1] must be an integer >= 0, got True"]),
    (_experiment_file("configs: [ufm10]\noverrides: null\n"), 2, ["exp.yaml: overrides must be a mapping"]),
    (_experiment_file("configs: [ufm10]\nepochs: 3\n"), 2, ["exp.yaml: unknown experiment key(s) epochs"]),
    (_results_dir("[]"), 2, ["provenance.json is damaged (not a JSON object)"]),
    (_results_dir("{", "config,variant,method,seed\n"), 2, ["provenance.json"]),
    (_results_dir("{}", "nonsense\n"), 2, ["runs.csv is damaged"]),
    (lambda tmp, _: ["cifar10_resnet18", f"data_root={tmp}", "epochs=1", "progress=false", "method=implicit",
                     "seed=0"], 4, ["Dataset 'cifar10' (train split) not found", "--download"]),
]


def _row_id(row):
    return "-".join(row[2][0].split()[:6])


@pytest.mark.parametrize("make,status,expected", FILE_ROWS, ids=[_row_id(r) for r in FILE_ROWS])
def test_bad_files_are_one_line_naming_the_file_and_the_fix(tmp_path, capsys, finished_run, make, status, expected):
    argv = make(tmp_path, finished_run)
    capsys.readouterr()
    if argv[0] == "reproduce":
        code = runner.main(argv[1:] + ["--no-progress"] + ([] if "--out" in argv else ["--out", str(tmp_path / "o")])
                           + ([] if "--work-dir" in argv else ["--work-dir", str(tmp_path / "w")]))
    else:
        code = train_main(argv + ([] if any(a.startswith(("run_dir=", "output_dir=")) for a in argv)
                                  else [f"output_dir={tmp_path / 'out'}"]))
    assert code == status
    line = _err_line(capsys)
    assert line.startswith("error: "), line
    for fragment in expected:
        assert fragment in line, line


# =================================================================== faults
def _interrupt_at_epoch(monkeypatch, epoch):
    from guiding_nc.training.trainer import Trainer

    fire = Trainer._fire

    def interrupting(self, event):
        fire(self, event)
        if event == "epoch_end" and self.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_fire", interrupting)


def _fault_interrupt_train(tmp, capsys, monkeypatch):
    """Ctrl-C in the middle of training: one line, status 130, the run recorded as killed, and
    resume=true finishes it."""
    run = tmp / "run"
    _interrupt_at_epoch(monkeypatch, 2)
    argv = UFM[:1] + ["epochs=4", "num_samples=40", "feature_dim=16", "batch_size=40", "progress=false",
                      "method=implicit", "seed=0", "checkpoint_every=1", f"run_dir={run}", "verbose=false"]
    code = train_main(argv)
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["status"] == "killed", prov["status"]
    line = _err_line(capsys)
    monkeypatch.undo()
    assert train_main(argv + ["resume=true"]) == 0
    resumed = json.loads((run / "provenance.json").read_text())
    assert resumed["status"] == "completed" and resumed["resumed_segments"][-1]["status"] == "killed"
    return code, line


def _fault_env_error(err, text):
    def fault(tmp, capsys, monkeypatch):
        real = os.replace

        def refuse(src, dst, *a, **k):
            if str(dst).startswith(str(tmp)):
                raise OSError(err, text, str(dst))
            return real(src, dst, *a, **k)

        monkeypatch.setattr(os, "replace", refuse)
        code = train_main(UFM + ["method=implicit", "seed=0", f"run_dir={tmp / 'run'}"])
        return code, _err_line(capsys)
    return fault


def _fault_mkdir(err, text):
    def fault(tmp, capsys, monkeypatch):
        real = Path.mkdir

        def refuse(self, *a, **k):
            if str(self).startswith(str(tmp / "out")):
                raise OSError(err, text, str(self))
            return real(self, *a, **k)

        monkeypatch.setattr(Path, "mkdir", refuse)
        code = train_main(UFM + ["method=implicit", "seed=0", f"output_dir={tmp / 'out'}"])
        return code, _err_line(capsys)
    return fault


def _fault_permission(tmp, capsys, monkeypatch):
    real = Path.mkdir

    def refuse(self, *a, **k):  # what a read-only directory does (even to root, on a read-only mount)
        if str(self).startswith(str(tmp / "ro")):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", refuse)
    code = train_main(UFM + ["method=implicit", "seed=0", f"output_dir={tmp / 'ro'}"])
    return code, _err_line(capsys)


def _fault_cli(argv):
    def fault(tmp, capsys, monkeypatch):
        if argv[0] == "reproduce":
            code = runner.main(argv[1:] + ["--out", str(tmp / "o"), "--work-dir", str(tmp / "w"), "--no-progress"])
        else:
            code = train_main(argv + [f"output_dir={tmp / 'out'}"])
        assert not (tmp / "o").exists() and not (tmp / "out").exists()
        return code, _err_line(capsys)
    return fault


def _sigint(argv, started, timeout=240):
    """Run ``argv`` in a fresh interpreter, send SIGINT once ``started()`` is true, and return
    (exit status, stderr)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=str(ROOT))
    deadline = time.time() + timeout
    while not started() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _fault_sigint_train(tmp, capsys, monkeypatch):
    run = tmp / "run"
    code, err = _sigint(["guiding_nc.train", "ufm10", "epochs=100000", "num_samples=40", "feature_dim=16",
                         "batch_size=40", "progress=false", "method=implicit", "seed=0", "checkpoint_every=1",
                         f"run_dir={run}", "verbose=false"],
                        lambda: (run / "metrics.jsonl").exists() and (run / "checkpoint.pt").exists())
    assert json.loads((run / "provenance.json").read_text())["status"] == "killed"
    return code, _one_line(err)


def _fault_sigint_reproduce(tmp, capsys, monkeypatch):
    work = tmp / "w"
    code, err = _sigint(["guiding_nc.experiments.reproduce", "ufm10", "--quick", "--methods", "implicit",
                         "--seeds", "0", "--out", str(tmp / "o"), "--work-dir", str(work), "--no-progress",
                         "epochs=100000", "checkpoint_every=1"],
                        lambda: any(work.rglob("checkpoint.pt")))
    provs = [json.loads(p.read_text()) for p in work.rglob("provenance.json")]
    assert provs and all(p["status"] == "killed" for p in provs), [p["status"] for p in provs]
    return code, _one_line(err)


FAULT_ROWS = [
    (_fault_cli(UFM + ["num_threads=5000"]), 2, "num_threads must be an integer from 1 to"),
    (_fault_cli(UFM + ["num_threads=100000"]), 2, "(4 per CPU of this machine)"),
    (_fault_cli(["reproduce", "ufm10", "--quick", "--threads", "100000"]), 2, "--threads must be an integer from 1 to"),
    (_fault_cli(["reproduce", "ufm10", "--quick", "--threads", "5000"]), 2, "(4 per CPU of this machine)"),
    (_fault_cli(["reproduce", "ufm10", "--quick", "--threads", "-1"]), 2, "--threads must be an integer from 1 to"),
    (_fault_interrupt_train, 130, "interrupted (Ctrl-C)"),
    (_fault_sigint_train, 130, "interrupted (Ctrl-C)"),
    (_fault_sigint_reproduce, 130, "interrupted (Ctrl-C)"),
    (_fault_env_error(errno.ENOSPC, "No space left on device"), 2, "(No space left on device); free space"),
    (_fault_env_error(errno.EROFS, "Read-only file system"), 2, "(Read-only file system)"),
    (_fault_mkdir(errno.ENAMETOOLONG, "File name too long"), 2, "a file name is too long"),
    (_fault_mkdir(errno.EEXIST, "File exists"), 2, "is in the way"),
    (_fault_permission, 2, "cannot write"),
]


@pytest.mark.parametrize("fault,status,expected", FAULT_ROWS, ids=[r[2][:40] for r in FAULT_ROWS])
def test_faults_are_one_line(tmp_path, capsys, monkeypatch, fault, status, expected):
    code, line = fault(tmp_path, capsys, monkeypatch)
    assert code == status, (code, line)
    assert line.startswith(("error: ", "interrupted")) and expected in line, line


# =================================================================== notebooks
NOTEBOOK_ROWS = [
    (["-p", "TYPO=1"], "no page declares parameter(s) TYPO"),
    (["--only", "ufm10", "-p", "TYPO=1"], "page 'ufm10' declares no parameter(s) TYPO"),
    (["--only", "ufm10,cost", "-p", "MAX_STEPS=5"], "page 'ufm10' declares no parameter(s) MAX_STEPS"),
    (["--only", "ufm10", "-p", "THREADS=abc"], "parameter THREADS must be an integer from 1 to"),
    (["--only", "ufm10", "-p", "THREADS=100000"], "parameter THREADS must be an integer from 1 to"),
    (["--only", "ufm10", "-p", "THREADS=true"], "parameter THREADS must be an integer from 1 to"),
    (["-p", "THREADS=0"], "parameter THREADS must be an integer from 1 to"),
    (["-p", "SEEDS=[0,0]"], "(0 is repeated)"),
    (["-p", "SEEDS=abc"], "parameter SEEDS must be a non-empty list"),
    (["-p", "SEEDS=[]"], "parameter SEEDS must be a non-empty list"),
    (["--only", "ufm10", "-p", "DEVICE=nosuch"], "invalid parameter DEVICE 'nosuch'"),
    (["--only", "real_offline", "-p", "EXPERIMENT=../x"], "parameter EXPERIMENT must be a plain name"),
    (["--only", "real_offline", "-p", "CONFIGS=cifar10_resnet18"], "parameter CONFIGS must be a non-empty list"),
    (["--only", "real_offline", "-p", "DOWNLOAD=maybe"], "parameter DOWNLOAD must be true or false"),
    (["--only", "cost", "-p", "KKT_CAP_GB=-1"], "parameter KKT_CAP_GB must be a number in (0, 1e+06]"),
    (["--only", "ufm_scaling", "-p", "MAX_STEPS=0"], "parameter MAX_STEPS must be a positive integer"),
    (["--only", "reduction_mappings", "-p", "LIVE_STEPS=0"], "parameter LIVE_STEPS must be a positive integer or null"),
    (["--only", "reduction_mappings", "-p", "SEED=-1"], "parameter SEED must be an integer from 0"),
    (["--only", "ufm10", "-p", f"OUT=/tmp/{LONG}"], "parameter OUT has a path component of 300 bytes"),
    (["-p", "QUICK=false"], "QUICK is not a parameter to give"),
    (["-p", "THREADS=1", "-p", "THREADS=2"], "parameter THREADS is given twice"),
    (["-p", "=3"], "is not a parameter name"),
    (["-p", "THREADS"], "parameter 'THREADS' is not of the form NAME=VALUE"),
    (["-p", "SEEDS=[0,"], "parameter SEEDS: '[0,' is not a valid YAML value"),
    (["--only", "nosuch"], "unknown page(s) nosuch"),
    (["--out-dir", f"/tmp/{LONG}"], "--out-dir has a path component of 300 bytes"),
]


@pytest.mark.parametrize("argv,expected", NOTEBOOK_ROWS, ids=[" ".join(a) for a, _ in NOTEBOOK_ROWS])
def test_bad_notebook_parameters_are_refused_before_any_page_runs(tmp_path, capsys, monkeypatch, argv, expected):
    ran = []
    monkeypatch.setattr(notebooks, "run_page", lambda *a, **k: ran.append(a))
    argv = argv if "--out-dir" in argv else argv + ["--out-dir", str(tmp_path / "nb")]
    assert notebooks.main(argv + ["--no-progress"]) == 2
    line = _err_line(capsys)
    assert line.startswith("error: ") and expected in line, line
    assert not ran and not (tmp_path / "nb").exists()


def test_notebook_out_dir_that_is_a_file_is_refused(tmp_path, capsys):
    f = _write(tmp_path, "nb", "x")
    assert notebooks.main(["--only", "ufm10", "--out-dir", str(f)]) == 2
    assert "--out-dir" in _err_line(capsys)


def test_every_declared_page_parameter_has_a_declared_type():
    for page in notebooks.PAGES:
        missing = set(notebooks.page_parameters(page)) - set(notebooks.PARAMETERS)
        assert not missing, (page, missing)


# =================================================================== the table's size
CATEGORIES = {
    "CLI and configs": len(CLI_ROWS) + len(ARGPARSE_ROWS) + len(REPRODUCE_ROWS),
    "library": len(LIBRARY_ROWS),
    "divergence": len(DIVERGENCE_ROWS),
    "files": len(FILE_ROWS),
    "faults": len(FAULT_ROWS),
    "notebooks": len(NOTEBOOK_ROWS),
}


def test_the_table_is_long_enough():
    assert all(n > 0 for n in CATEGORIES.values()), CATEGORIES
    assert sum(CATEGORIES.values()) >= 150, CATEGORIES
