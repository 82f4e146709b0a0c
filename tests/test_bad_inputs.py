"""Every bad input gets one clear line and exit status 2, and nothing is written.

A table of bad command lines (training and the experiment runner) and bad library calls: each
row names the input and a fragment the one-line message must contain (the key at fault, and
what it accepts where there is a short list).
"""
import pytest
import torch

import guiding_nc as gnc
from guiding_nc.experiments import runner
from guiding_nc.core.heads import build_head
from guiding_nc.training.train_command import main as train_main

UFM = ["ufm10", "epochs=1", "num_samples=40", "feature_dim=16", "batch_size=40", "progress=false"]
DIGITS = ["digits_mlp", "epochs=1", "max_test_samples=50", "progress=false"]

TRAIN_ROWS = [
    (UFM + ["lr=abc"], "lr must be a number"),
    (UFM + ["betas=abc"], "betas must be a list of numbers"),
    (UFM + ["betas=[0.9]"], "betas must be two numbers"),
    (UFM + ["ema_floor=abc"], "ema_floor must be a number"),
    (UFM + ["ema_floor=2"], "ema_floor must lie in (0, 1]"),
    (UFM + ["solver_max_iterations=abc"], "solver_max_iterations must be an integer"),
    (UFM + ["report_epochs=abc"], "report_epochs must be a list of integers"),
    (UFM + ["report_epochs=[0]"], "report_epochs must be epochs >= 1"),
    (UFM + ["epochs=true"], "epochs must be an integer"),
    (UFM + ["epochs=0"], "epochs must be a positive integer"),
    (UFM + ["seed=1.5"], "seed must be an integer"),
    (UFM + ["seed=-1"], "seed must be an integer >= 0"),
    (UFM + ["seeds=abc"], "seeds must be a list of integers"),
    (UFM + ["split_seed=abc"], "split_seed must be an integer"),
    (UFM + ["model_kwargs=abc"], "model_kwargs must be a mapping"),
    (UFM + ["seeds=[0,"], "override seeds: '[0,' is not a valid YAML value"),
    (UFM + ["name=../../x"], "name must be a plain name"),
    (UFM + ["name=a/b"], "name must be a plain name"),
    (UFM + ["batch_size=1"], "batch_size must be an integer >= 2"),
    (UFM + ["tau=-1"], "tau must be > 0"),
    (UFM + ["delta=0"], "delta must be > 0"),
    (UFM + ["method=nosuch"], "unknown method 'nosuch'; choose one of standard"),
    (UFM + ["methods=[standard, nosuch]"], "unknown method 'nosuch'"),
    (UFM + ["optimizer=nosuch"], "unknown optimizer 'nosuch'; choose one of agd, sgd, adam"),
    (UFM + ["model=nosuch"], "unknown model 'nosuch'; choose one of ufm"),
    (UFM + ["dataset=nosuch"], "unknown dataset 'nosuch'; choose one of ufm"),
    (UFM + ["nosuch_key=1"], "unknown config key(s): nosuch_key"),
    (UFM + ["ddn_backward=nosuch"], "unknown ddn_backward 'nosuch'; choose one of closed_form, kkt, none"),
    (UFM + ["solver=nosuch"], "unknown solver 'nosuch'; choose one of closed_form, trust_region"),
    (UFM + ["solve_dtype=float16"], "solve_dtype must be 'float32' or 'float64'"),
    (UFM + ["amp_dtype=float32"], "amp_dtype must be 'bfloat16' or 'float16'"),
    (UFM + ["device=nosuch"], "invalid device 'nosuch'"),
    (UFM + ["num_threads=0"], "num_threads must be a positive integer"),
    (UFM + ["eval_every=0"], "eval_every must be a positive integer"),
    (UFM + ["checkpoint_every=-1"], "checkpoint_every must be a positive integer"),
    (UFM + ["optimizer=adam", "lr=-1"], "lr must be a positive number"),
    (UFM + ["weight_decay=-1"], "weight_decay must be a number >= 0"),
    (UFM + ["momentum=-0.5"], "momentum must be a number >= 0"),
    (UFM + ["gain=-1"], "gain must be a number >= 0"),
    (UFM + ["feature_dim=-3"], "feature_dim must be a positive integer"),
    (UFM + ["num_classes=1"], "num_classes must be an integer >= 2"),
    (UFM + ["head_bias=true"], "head_bias=true conflicts with optimizer 'agd'"),
    (UFM + ["epochs.x=1"], "only a mapping-valued key takes a dotted entry"),
    (UFM + ["model_kwargs.init=zeros"], "unknown UFM init 'zeros'; choose one of gaussian, mean_free"),
    (DIGITS + ["max_train_samples=-5"], "max_train_samples must be a positive integer"),
    (["nosuch_config"], "config 'nosuch_config' not found"),
]

REPRODUCE_ROWS = [
    (["nosuch"], "no experiment 'nosuch'"),
    (["ufm10", "--quick", "--configs", "ufm99"], "has no config(s) ufm99; it has ufm10"),
    (["ufm10", "--quick", "--methods", "foo"], "unknown method 'foo'; choose one of"),
    (["ufm10", "--quick", "--threads", "0"], "--threads must be a positive integer"),
    (["ufm10", "--quick", "epoch=3"], "unknown config key(s): epoch"),
    (["ufm10", "--quick", "delta=abc"], "delta must be a number"),
    (["ufm10", "--quick", "seeds=[0,"], "is not a valid YAML value"),
    (["ufm10", "--quick", "--seeds", "x"], "argument --seeds: invalid int value"),
    (["ufm10", "--quick", "stray"], "unrecognised argument(s) stray"),
]


def _written(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _one_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("argv,expected", TRAIN_ROWS, ids=[" ".join(a[-1:]) for a, _ in TRAIN_ROWS])
def test_bad_training_command_lines(tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    out.mkdir()
    assert train_main(argv + [f"output_dir={out}"]) == 2
    line = _one_line(capsys)
    assert line.startswith("error: ") and expected in line, line
    assert _written(out) == []


def test_bad_training_command_line_exits_2_through_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(["ufm10", "--nosuch-flag"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --nosuch-flag" in _one_line(capsys)


@pytest.mark.parametrize("argv,expected", REPRODUCE_ROWS, ids=[" ".join(a) for a, _ in REPRODUCE_ROWS])
def test_bad_experiment_command_lines(tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    try:
        code = runner.main(argv + ["--out", str(out), "--work-dir", str(tmp_path / "work"), "--no-progress"])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    line = _one_line(capsys)
    assert line.startswith("error: ") and expected in line, line
    assert not out.exists() and not (tmp_path / "work").exists()


def test_a_corrupt_config_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\nname: x\n")
    assert train_main([str(bad), f"output_dir={tmp_path / 'out'}"]) == 2
    assert "is not valid YAML (line" in _one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_an_output_directory_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):  # what a read-only directory does (even to root, on a read-only mount)
        if str(self).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert train_main(UFM + ["method=implicit", "seed=0", f"output_dir={tmp_path / 'ro'}"]) == 2
    line = _one_line(capsys)
    assert line.startswith("error: cannot write") and "Permission denied" in line, line


def test_a_garbage_checkpoint_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"garbage")
    assert train_main(UFM + ["method=implicit", "seed=0", f"run_dir={run}", "resume=true"]) == 2
    assert "cannot read the checkpoint" in _one_line(capsys)


H = torch.randn(8, 3, dtype=torch.float64)
H = H - H.mean(1, keepdim=True)
LIBRARY_ROWS = [
    (lambda: gnc.nearest_etf(H, gnc.canonical_point(8, 3, dtype=torch.float32)), ValueError, "prox has dtype"),
    (lambda: gnc.nearest_etf(torch.full((8, 3), float("nan"), dtype=torch.float64), method="trust_region",
                             check=False), ValueError, "non-finite"),
    (lambda: gnc.nearest_etf(H[:, 0]), ValueError, "(d, C) matrix"),
    (lambda: gnc.nearest_etf(H[:2]), ValueError, "d >= number of classes"),
    (lambda: gnc.nearest_etf(H, delta=-1.0), ValueError, "delta must be a finite number >= 0"),
    (lambda: gnc.nearest_etf(H, method="newton"), ValueError, "unknown method 'newton'"),
    (lambda: gnc.nearest_etf(H, backward="magic"), ValueError, "unknown backward 'magic'"),
    (lambda: gnc.nearest_etf(H, 2 * gnc.canonical_point(8, 3, dtype=torch.float64)), ValueError,
     "point of the Stiefel manifold"),
    (lambda: gnc.nearest_etf(H.long()), TypeError, "floating-point"),
    (lambda: gnc.NearestETF(8, 3, delta=0.0), ValueError, "delta > 0"),
    (lambda: build_head("learned", 8, 3), ValueError, "unknown method 'learned'"),
]


@pytest.mark.parametrize("call,error,expected", LIBRARY_ROWS, ids=[r[2] for r in LIBRARY_ROWS])
def test_bad_library_calls(call, error, expected):
    with pytest.raises(error, match=None) as exc:
        call()
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_the_table_is_long_enough():
    assert len(TRAIN_ROWS) + len(REPRODUCE_ROWS) + len(LIBRARY_ROWS) >= 40
