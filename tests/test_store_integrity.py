"""The results store never labels, drops or mixes results, whatever the command line, a second
command at the same time, a missing or damaged file, or a crash at any point of a write.

* per-run settings given as overrides, and flag values outside the grid, are refused (one line);
* a command with other settings writing into the same ``--out`` meanwhile is refused at its next
  write, never dropped;
* a missing ``summary.json`` is rebuilt, a missing ``curves.csv`` rebuilt from the work directory
  or refused; damaged files are named with the fix;
* a crash at every write point of a quick experiment, then the same command again, gives the
  files an uninterrupted run writes (:func:`test_a_crash_at_any_write_point_then_a_rerun_gives_the_uninterrupted_files`);
* every write stays inside its directory, through no planted symbolic link.

What legitimately differs between a crashed-and-rerun experiment and an uninterrupted one, and is
left out of the comparison (:func:`_comparable`): dates, wall times and the other measurements of
the machine (``time_*``, ``wall_*``, ``peak_*`` columns, summary cells and provenance fields), the
directory the command ran in (``cwd``), and the history of the processes behind a run
(``earlier_commits`` of a run resumed from its checkpoint, the first and last dates of each
invocation).  Every number a run computed, every label, every count, every status and every
command must be equal.
"""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from guiding_nc.experiments import runner, store
from guiding_nc.experiments.results import load_results, results_dir, summarize_records
from guiding_nc.experiments.spec import load_experiment
from guiding_nc.training import provenance
from guiding_nc.training.config import ConfigError, TrainConfig
from guiding_nc.training.trainer import NonFiniteError, Trainer, train_run

REPO = Path(__file__).resolve().parents[1]

TINY = """
configs: [ufm10]
methods: [standard, implicit]
seeds: [0]
overrides: {num_samples: 40, feature_dim: 16, batch_size: 40, epochs: 4, eval_every: 2, checkpoint_every: 2}
record_step_accuracy: true
save_margins: true
"""


def _spec(tmp_path, text=TINY, name="tiny"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


def _cli(capsys, *args):
    rc = runner.main([*map(str, args), "--no-progress", "--threads", "1"])
    err = capsys.readouterr().err.strip()
    return rc, err


def _result_files(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).iterdir()) if p.is_file()}


@pytest.fixture
def fixed_git(monkeypatch):
    """One git answer for every provenance record (the tree under test may change meanwhile, and
    the many runs below then need no git process each)."""
    monkeypatch.setattr(provenance, "git_info", lambda path=None: {"commit": "c" * 40, "dirty": False,
                                                                    "branch": "main"})


# ------------------------------------------------------------------ 1. per-run keys, the grid
@pytest.mark.parametrize("override, flag", [
    ("methods=[fixed]", "--methods"), ("method=fixed", "--methods"), ("seeds=[3]", "--seeds"), ("seed=3", "--seeds"),
    ("device=cpu", "--device"), ("num_threads=2", "--threads"), ("run_dir=/tmp/x", "--work-dir"),
    ("output_dir=x", "--work-dir"), ("name=x", "--work-dir"), ("resume=false", "--work-dir"),
    ("quick=true", "--quick"), ("stop_after_epoch=2", "interrupt the command"),
    ("save_margins=false", "experiment file")])
def test_a_per_run_setting_given_as_an_override_is_refused_naming_the_flag(tmp_path, capsys, override, flag):
    rc, err = _cli(capsys, "ufm10", "--quick", override, "--out", tmp_path / "o", "--work-dir", tmp_path / "w")
    assert rc == 2 and "\n" not in err and flag in err
    assert err.startswith(f"error: {override.split('=')[0]}=") and "cannot be an override" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()  # before anything is written


@pytest.mark.parametrize("args, text", [
    (["--quick", "--seeds", "7"], "experiment 'ufm10' (quick) has no seed 7 (--seeds); its seeds are 0, 1"),
    (["--seeds", "0", "7", "9"], "experiment 'ufm10' has no seed(s) 7, 9 (--seeds); its seeds are 0, 1, 2, 3, 4"),
    (["--quick", "--methods", "bogus"], "has no method bogus (--methods); its methods are standard, fixed, implicit"),
    (["--quick", "--configs", "ufm100"], "has no config ufm100 (--configs); its configs are ufm10"),
    (["--quick", "--variants", "x"], "has no variant x (--variants); its variants are default")])
def test_a_slice_outside_the_grid_is_refused_naming_the_grid(tmp_path, capsys, args, text):
    rc, err = _cli(capsys, "ufm10", *args, "--out", tmp_path / "o", "--work-dir", tmp_path / "w")
    assert rc == 2 and "\n" not in err and text in err
    assert not (tmp_path / "o").exists()


def test_an_experiment_file_cannot_set_a_per_run_key(tmp_path):
    with pytest.raises(ConfigError, match=r"variants.a.overrides sets method, which the grid sets per run"):
        load_experiment(_spec(tmp_path, "configs: [ufm10]\nvariants: {a: {overrides: {method: fixed}}}\n"))
    with pytest.raises(ConfigError, match=r"overrides sets seeds"):
        load_experiment(_spec(tmp_path, "configs: [ufm10]\noverrides: {seeds: [3]}\n"))
    # A config's own seeds narrow the experiment's: still allowed.
    spec = load_experiment(_spec(tmp_path, "configs: [ufm10]\nconfig_overrides: {ufm10: {seeds: [1]}}\n"))
    assert {j["seed"] for j in spec.jobs()} == {1}


# ------------------------------------------------------------------ 2. a concurrent command
def test_a_command_with_other_settings_writing_meanwhile_is_refused_not_dropped(tmp_path, monkeypatch, fixed_git):
    # A starts on an empty --out; while it trains its first run, B (tau=2, its own work
    # directory) runs to the end into the same --out.  A's first write finds B's runs: it stops
    # with one line, B's files stay exactly as B wrote them.
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    real = runner.train_run
    state = {}

    def a_trains(cfg, **kw):
        if not state:
            state["b"] = True
            monkeypatch.setattr(runner, "train_run", real)
            runner.run_experiment(spec, out=out, work_dir=tmp_path / "wb", overrides={"tau": 2.0}, progress=False,
                                  num_threads=1)
            state["files"] = _result_files(out)
            monkeypatch.setattr(runner, "train_run", a_trains)
        return real(cfg, **kw)

    monkeypatch.setattr(runner, "train_run", a_trains)
    with pytest.raises(ConfigError) as exc:
        runner.run_experiment(spec, out=out, work_dir=tmp_path / "wa", progress=False, num_threads=1)
    msg = str(exc.value)
    assert "\n" not in msg and "now holds 2 run(s) made with other settings" in msg and "--out DIR" in msg
    assert _result_files(out) == state["files"]
    assert {r["method"] for r in load_results(out)["runs"]} == {"standard", "implicit"}
    assert (tmp_path / "wa" / "ufm10" / "default" / "standard" / "0" / "record.json").exists()  # A's run kept


def test_replace_drops_only_the_rows_it_saw_at_the_start(tmp_path, monkeypatch, fixed_git):
    spec = _spec(tmp_path, TINY.replace("methods: [standard, implicit]", "methods: [implicit]"))
    out = tmp_path / "out"
    runner.run_experiment(spec, out=out, work_dir=tmp_path / "w0", overrides={"delta": 0.5}, progress=False)
    real = runner.train_run
    state = {}

    def a_trains(cfg, **kw):
        res = real(cfg, **kw)
        if not state:  # after A trained, before it writes: B (tau=3) rewrites the files meanwhile
            state["b"] = True
            monkeypatch.setattr(runner, "train_run", real)
            with pytest.warns(UserWarning, match="not made with the settings"):
                runner.run_experiment(spec, out=out, work_dir=tmp_path / "wb", overrides={"tau": 3.0}, replace=True,
                                      progress=False)
            state["files"] = _result_files(out)
        return res

    monkeypatch.setattr(runner, "train_run", a_trains)
    with pytest.raises(ConfigError, match=r"now holds 1 run\(s\) made with other settings .* since this one started"):
        runner.run_experiment(spec, out=out, work_dir=tmp_path / "wa", replace=True, progress=False)
    assert _result_files(out) == state["files"]


# ------------------------------------------------------------------ 3. missing files
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished quick grid of 2 runs, its result directory and work directory (copied per test)."""
    root = tmp_path_factory.mktemp("finished")
    spec = _spec(root)
    runner.run_experiment(spec, out=root / "out", work_dir=root / "work", progress=False, num_threads=1)
    return spec, root


def _copy(finished, tmp_path):
    import shutil

    spec, root = finished
    shutil.copytree(root / "out", tmp_path / "out")
    return spec, tmp_path / "out", root / "work"


def test_a_missing_summary_is_rebuilt_and_no_row_is_dropped(finished, tmp_path):
    spec, out, _ = _copy(finished, tmp_path)
    before = load_results(out)
    (out / "summary.json").unlink()
    assert load_results(out)["summary"] == before["summary"]  # read: rebuilt from runs.csv
    # A slice from a fresh clone (no work directory): every row kept, summary.json written again.
    runner.run_experiment(spec, out=out, work_dir=tmp_path / "fresh", seeds=[0], methods=["implicit"], progress=False)
    after = load_results(out)
    assert after["runs"] == before["runs"] and after["curves"] == before["curves"]
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summarize_records(after["runs"])))


def test_a_missing_curves_file_is_rebuilt_from_the_work_directory_or_refused(finished, tmp_path, capsys):
    spec, out, work = _copy(finished, tmp_path)
    before = _result_files(out)
    (out / "curves.csv").unlink()
    rc, err = _cli(capsys, spec, "--seeds", "0", "--methods", "implicit", "--out", out, "--work-dir", tmp_path / "fresh")
    assert rc == 2 and "\n" not in err
    assert f"{out}/curves.csv is missing, and 2 run(s) that runs.csv holds are not finished in the work directory" in err
    assert "git checkout --" in err and "--work-dir that made them" in err
    assert (out / "runs.csv").read_bytes() == before["runs.csv"] and not (out / "curves.csv").exists()
    # With the work directory that made them: rebuilt, the same bytes as before.
    runner.run_experiment(spec, out=out, work_dir=work, seeds=[0], methods=["implicit"], progress=False)
    assert (out / "curves.csv").read_bytes() == before["curves.csv"]


def test_missing_runs_or_provenance_refuse_and_replace_starts_afresh(finished, tmp_path, capsys):
    spec, out, work = _copy(finished, tmp_path)
    (out / "provenance.json").unlink()
    rc, err = _cli(capsys, spec, "--out", out, "--work-dir", tmp_path / "w")
    assert rc == 2 and f"{out}/provenance.json is missing, so the 2 run(s) in runs.csv cannot be checked" in err
    assert "--replace" in err
    spec2, out2, _ = _copy(finished, tmp_path / "b")
    (out2 / "runs.csv").unlink()
    rc, err = _cli(capsys, spec2, "--out", out2, "--work-dir", tmp_path / "w")
    assert rc == 2 and f"{out2}/runs.csv is missing while {out2}/provenance.json records 2 run(s)" in err
    # --replace: the folder is rebuilt from what this command has (here: the work directory).
    runner.run_experiment(spec2, out=out2, work_dir=work, replace=True, progress=False)
    assert len(load_results(out2)["runs"]) == 2


def _cut_line_2(path):
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:40], *lines[2:]]) + "\n")


@pytest.mark.parametrize("damage, text", [
    (lambda out: _cut_line_2(out / "runs.csv"), r"runs.csv is damaged \(line 2 has fewer cells than the header\)"),
    (lambda out: (out / "runs.csv").write_text("config,variant,method,seed\nufm10,default,,0\n"),
     r"runs.csv is damaged \(line 2 has no valid method\)"),
    (lambda out: (out / "curves.csv").write_text("epoch,step\n1,1\n"),
     r"curves.csv is damaged \(its header has no config, variant, method, seed column\)"),
    (lambda out: (out / "provenance.json").write_text((out / "provenance.json").read_text()[:300]),
     r"provenance.json is damaged \(not valid JSON: .*, line \d+ column \d+\)"),
])
def test_a_damaged_result_file_is_named_with_the_fix(finished, tmp_path, capsys, damage, text):
    import re

    spec, out, _ = _copy(finished, tmp_path)
    damage(out)
    before = _result_files(out)
    rc, err = _cli(capsys, spec, "--out", out, "--work-dir", tmp_path / "w")
    assert rc == 2 and "\n" not in err and re.search(text, err) and "git checkout --" in err and "--replace" in err
    assert _result_files(out) == before
    with pytest.raises(ConfigError, match=text):
        load_results(out)


def test_a_damaged_summary_is_rebuilt_by_the_next_write(finished, tmp_path):
    spec, out, work = _copy(finished, tmp_path)
    good = (out / "summary.json").read_text()
    (out / "summary.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"summary.json is damaged \(not a JSON object\)"):
        load_results(out)
    runner.run_experiment(spec, out=out, work_dir=work, progress=False)
    assert json.loads((out / "summary.json").read_text()) == json.loads(good)


def test_a_damaged_run_record_is_named_with_the_fix(finished, tmp_path, capsys):
    import shutil

    spec, root = finished
    work = tmp_path / "work"
    shutil.copytree(root / "work", work)
    rec = work / "ufm10" / "default" / "implicit" / "0" / "record.json"
    rec.write_text(rec.read_text()[:100])
    rc, err = _cli(capsys, spec, "--out", tmp_path / "o", "--work-dir", work)
    assert rc == 2 and "\n" not in err and f"{rec} is damaged" in err and "delete it and rerun" in err


def test_a_full_disk_names_the_file_and_leaves_the_last_complete_files(finished, tmp_path, capsys, monkeypatch):
    spec, out, work = _copy(finished, tmp_path)
    before = _result_files(out)
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    rc, err = _cli(capsys, spec, "--out", out, "--work-dir", work)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert rc == 2 and "\n" not in err
    assert f"cannot write {out}/runs.csv (No space left on device)" in err
    assert _result_files(out) == before and not list(out.glob(".*"))  # the last complete write, no leftovers


def test_a_full_disk_while_training_names_the_checkpoint_and_says_failed(tmp_path, monkeypatch):
    real_save = torch.save

    def full(obj, f, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    tr = Trainer(_ufm(tmp_path, epochs=2))
    with pytest.raises(OSError) as exc:
        tr.fit()
    monkeypatch.setattr(torch, "save", real_save)
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(tr.checkpoint_path)
    assert json.loads((tr.run_dir / "provenance.json").read_text())["status"] == "failed"  # not "running"
    assert not list(tr.run_dir.glob(".*"))


# ------------------------------------------------------------------ 4. a crash at any write point
class _Killed(BaseException):
    """The process dies here: nothing after it may write, rename or remove a file."""


def _kill_at(monkeypatch, k):
    """Make the k-th file-system change (``os.replace``, ``os.rename``, ``os.unlink``: every atomic
    write's commit, every rename of the journal's commit, every removal) the point the process dies:
    from then on no change happens (a killed process cleans nothing up)."""
    state = {"n": 0, "dead": False}
    calls = {name: getattr(os, name) for name in ("replace", "rename", "unlink", "remove")}

    def wrap(name):
        def f(*a, **kw):
            if not state["dead"]:
                state["n"] += 1
                if state["n"] == k:
                    state["dead"] = True
            if state["dead"]:
                raise _Killed(f"killed at file-system change {k}")
            return calls[name](*a, **kw)
        return f

    for name in calls:
        monkeypatch.setattr(os, name, wrap(name))
    return state


def _count_changes(monkeypatch):
    state = {"n": 0}
    calls = {name: getattr(os, name) for name in ("replace", "rename", "unlink", "remove")}

    def wrap(name):
        def f(*a, **kw):
            state["n"] += 1
            return calls[name](*a, **kw)
        return f

    for name in calls:
        monkeypatch.setattr(os, name, wrap(name))
    return state, calls


_MEASURED = ("time_", "wall_", "peak_")


def _comparable(out):
    """The result files of ``out`` without what legitimately differs between two runs of the same
    command (see the module docstring)."""
    import csv
    import io

    res = {}
    for name, data in _result_files(out).items():
        text = data.decode()
        if name.endswith(".csv"):
            rows = list(csv.DictReader(io.StringIO(text)))
            res[name] = [{k: v for k, v in r.items() if not k.startswith(_MEASURED)} for r in rows]
        elif name == "summary.json":
            res[name] = {g: {k: v for k, v in cell.items() if not k.startswith(_MEASURED)}
                         for g, cell in json.loads(text).items()}
        elif name == "provenance.json":
            prov = json.loads(text)
            for k in ("date", "wall_time_s", "runs_wall_time_s", "cwd"):
                prov.pop(k)
            for inv in prov["invocations"]:
                inv.pop("first_date"), inv.pop("last_date")
            for meta in prov["run_sources"].values():
                meta.pop("first_date"), meta.pop("last_date"), meta.pop("earlier_commits")
            res[name] = prov
        else:
            res[name] = json.loads(text)
    return res


def _argv(spec, out, work):
    return ["python", "-m", runner.MODULE, str(spec), "--out", str(out), "--work-dir", str(work)]


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["whole grid", "slice beside committed runs"])
def test_a_crash_at_any_write_point_then_a_rerun_gives_the_uninterrupted_files(tmp_path, monkeypatch, fixed_git,
                                                                                 scenario):
    """Every file-system change of a quick experiment (each atomic write of the trainer, of the run
    records and of the result files; each rename and removal of the result files' one-change
    write) is, in turn, the point where the process dies.  The same command run again must then
    write the files an uninterrupted run writes.  Scenarios: the whole grid of two runs into an
    empty folder; one run of it (``--methods implicit``, a fresh work directory) into a folder that
    holds the other run already (committed results made in another clone), which must survive
    every kill."""
    import shutil

    spec = _spec(tmp_path)
    out, work = Path("out"), Path("work")  # relative, in a directory per try: every command is the same
    committed = None
    slice_ = {}
    if scenario != "whole grid":
        committed = tmp_path / "committed"
        runner.run_experiment(spec, out=committed, work_dir=tmp_path / "elsewhere", methods=["standard"],
                              progress=False, num_threads=1)
        slice_ = {"methods": ["implicit"]}

    def run():
        runner.run_experiment(spec, out=out, work_dir=work, progress=False, num_threads=1,
                              argv=_argv(spec, out, work), **slice_)

    def fresh(where):
        where.mkdir()
        monkeypatch.chdir(where)
        if committed is not None:
            shutil.copytree(committed, where / "out")

    fresh(tmp_path / "ref")
    counter, real = _count_changes(monkeypatch)
    run()
    total = counter["n"]
    for name, f in real.items():
        monkeypatch.setattr(os, name, f)
    reference = _comparable(out)
    assert len(reference["runs.csv"]) == 2 and reference["provenance.json"]["status"] == "completed"
    assert total > (40 if committed is None else 20)  # every write of the trainer and of the result files
    tried = 0
    for k in range(1, total + 1):
        fresh(tmp_path / f"k{k}")
        state = _kill_at(monkeypatch, k)
        with pytest.raises(_Killed):
            run()
        assert state["dead"]
        for name, f in real.items():
            monkeypatch.setattr(os, name, f)
        if committed is not None:  # the committed run is there after every kill, as readers see it
            assert "ufm10/default/standard/0" in {f"{r['config']}/{r['variant']}/{r['method']}/{r['seed']}"
                                                  for r in load_results(out)["runs"]}, k
        run()  # the same command again
        assert _comparable(out) == reference, f"killed at file-system change {k} of {total}"
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")], k  # no journal or temp file left
        tried += 1
    assert tried == total


_DRIVER = """
import os, sys
k = int(sys.argv[1])
n = [0]
real = os.replace
def replace(*a, **kw):
    n[0] += 1
    if n[0] == k:
        os._exit(137)  # kill -9: no cleanup, no finally, no flush
    return real(*a, **kw)
os.replace = replace
from guiding_nc.training import provenance
provenance.git_info = lambda path=None: {"commit": "c" * 40, "dirty": False, "branch": "main"}
from guiding_nc.experiments import runner
rc = runner.main(sys.argv[2:])
print("replaced", n[0])
sys.exit(rc)
"""


@pytest.mark.slow
def test_a_kill_9_inside_the_last_write_of_the_result_files_then_a_rerun_converges(tmp_path, monkeypatch, fixed_git):
    """A real kill (``os._exit``: temporary files and the journal stay behind) at the renames of
    the last write of the result files: a staged file, the journal's commit, the first and the
    last rename into place; then the same command again, in this process."""
    spec = _spec(tmp_path)
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    argv = [str(spec), "--out", "out", "--work-dir", "work", "--no-progress", "--threads", "1"]

    def drive(where, k):
        where.mkdir()
        return subprocess.run([sys.executable, str(driver), str(k), *argv], env=env, cwd=where, capture_output=True,
                              text=True, timeout=600)

    ref = drive(tmp_path / "ref", 0)  # never killed: the reference, and how many os.replace calls it makes
    assert ref.returncode == 0, ref.stderr
    total = int(ref.stdout.split("replaced")[-1])
    reference = _comparable(tmp_path / "ref" / "out")
    # The last write of the result files is the last 13 calls: 6 files and the journal staged, 6 renamed.
    for k in (total - 12, total - 6, total - 5, total):
        where = tmp_path / f"k{k}"
        killed = drive(where, k)
        assert killed.returncode == 137, killed.stderr
        out = where / "out"
        left = [p.name for p in out.iterdir() if p.name.startswith(".")]
        assert left  # the kill left its temporary files (and, once committed, its journal) behind
        committed = k >= total - 5
        assert (provenance.JOURNAL_NAME in left) == committed
        # Readers see the last complete write: the one before (status "running") or the committed one.
        seen = json.loads(provenance.committed_file(out, "provenance.json").read_text())
        assert seen["status"] == ("completed" if committed else "running")
        assert load_results(out)["provenance"]["status"] == seen["status"]
        monkeypatch.chdir(where)
        assert runner.main(argv) == 0  # the same command again
        assert _comparable(out) == reference, k
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_several_files_are_written_as_one_change(tmp_path, monkeypatch):
    d = tmp_path / "d"
    provenance.atomic_write_files(d, {"a.csv": "old a\n", "b.json": "{}\n"})
    assert (d / "a.csv").read_text() == "old a\n" and not list(d.glob(".*"))
    # A crash after the commit, before the renames: readers see the new files; the next write
    # (or recover_files) puts them in place first.
    real = os.replace

    def crash_after_commit(src, dst):
        real(src, dst)
        if Path(dst).name == provenance.JOURNAL_NAME:
            raise _Killed()

    monkeypatch.setattr(os, "replace", crash_after_commit)
    with pytest.raises(_Killed):
        provenance.atomic_write_files(d, {"a.csv": "new a\n", "b.json": '{"new": 1}\n'})
    monkeypatch.setattr(os, "replace", real)
    assert (d / "a.csv").read_text() == "old a\n"
    assert provenance.committed_file(d, "a.csv").read_text() == "new a\n"
    provenance.recover_files(d)
    assert (d / "a.csv").read_text() == "new a\n" and (d / "b.json").read_text() == '{"new": 1}\n'
    assert not list(d.glob(".*"))
    # A crash before the commit: the old files stay, the staged ones are removed by recovery.
    def crash_before_commit(src, dst):
        if Path(dst).name == provenance.JOURNAL_NAME:
            raise _Killed()
        real(src, dst)

    monkeypatch.setattr(os, "replace", crash_before_commit)
    with pytest.raises(_Killed):
        provenance.atomic_write_files(d, {"a.csv": "newer a\n", "b.json": "[]\n"})
    monkeypatch.setattr(os, "replace", real)
    assert provenance.committed_file(d, "a.csv").read_text() == "new a\n"
    provenance.recover_files(d)
    assert (d / "a.csv").read_text() == "new a\n" and not list(d.glob(".*"))
    # A journal whose files match neither version: refused, naming the fix.
    (d / provenance.JOURNAL_NAME).write_text(json.dumps({"format": "guiding_nc.journal/1", "files": [
        {"name": "a.csv", "staged": ".a.csv.x.tmp", "sha256": "0" * 64}]}))
    with pytest.raises(ConfigError, match="neither the version the interrupted write .* was writing"):
        provenance.recover_files(d)


# ------------------------------------------------------------------ 5. resume
def _ufm(tmp_path, **kw):
    cfg = dict(name="t", output_dir=str(tmp_path), dataset="ufm", model="ufm", num_classes=4, num_samples=32,
               feature_dim=16, batch_size=16, epochs=4, eval_every=1, checkpoint_every=1, progress=False,
               verbose=False, method="implicit", optimizer="sgd", lr=0.1, weight_decay=5e-4, num_threads=1)
    cfg.update(kw)
    return TrainConfig.from_dict(cfg)


@pytest.mark.parametrize("change, text", [({"lr": 0.2}, "lr (0.1 vs 0.2)"),
                                          ({"weight_decay": 0.0}, "weight_decay (0.0005 vs 0.0)"),
                                          ({"gain": 3.0}, "gain (10.0 vs 3.0)"),
                                          ({"eval_every": 2}, "eval_every (1 vs 2)")])
def test_resume_refuses_any_setting_that_changes_the_result(tmp_path, change, text):
    train_run(_ufm(tmp_path, stop_after_epoch=2))
    run = tmp_path / "t" / "implicit" / "seed0"
    before = {n: (run / n).read_text() for n in ("config.yaml", "provenance.json")}
    with pytest.raises(ConfigError) as exc:
        train_run(_ufm(tmp_path, resume=True, **change))
    msg = str(exc.value)
    assert "\n" not in msg and f"cannot resume {run / 'checkpoint.pt'}: the checkpoint was written with a different" in msg
    assert text in msg and "overwrite=true" in msg
    assert {n: (run / n).read_text() for n in before} == before  # nothing recorded of the refused settings
    # What only says when to pause, where or how it runs, may differ.
    assert train_run(_ufm(tmp_path, resume=True, device="cpu", data_root="elsewhere"))["status"] == "completed"


def test_the_resume_rule_is_the_result_files_rule(tmp_path):
    from guiding_nc.experiments.store import effective_settings
    from guiding_nc.training.provenance import result_settings

    a = _ufm(tmp_path)
    assert effective_settings(a) == result_settings(a)
    t = Trainer(a)
    assert t.resume_differences(a.to_dict(), "x") == []
    assert t.resume_differences(a.replace(stop_after_epoch=2, device="cpu", run_dir="/x").to_dict(), "x") == []
    assert t.resume_differences(a.replace(lr=0.3).to_dict(), "x") == ["lr (0.3 vs 0.1)"]


def test_a_checkpoint_with_non_finite_weights_is_never_called_good(tmp_path):
    from guiding_nc.training.checkpoints import CheckpointError

    train_run(_ufm(tmp_path, stop_after_epoch=2))
    ck = tmp_path / "t" / "implicit" / "seed0" / "checkpoint.pt"
    state = torch.load(ck, weights_only=True)
    state["model"]["backbone.features"][0, 0] = float("nan")
    torch.save(state, ck)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt holds non-finite backbone.features, not a state to "
                                              r"continue from: delete it or pass overwrite=true"):
        train_run(_ufm(tmp_path, resume=True))


# ------------------------------------------------------------------ 6. divergence
def _blow_up_at(step):
    """What AGD does at an absurd learning rate: features finite but so large that their norm
    overflows (normalised, they become zeros and every metric is meaningless)."""
    def cb(event, trainer):
        if event == "step_end" and trainer.global_step == step:
            with torch.no_grad():
                trainer.network.backbone.features.mul_(1e30)
    return cb


@pytest.mark.parametrize("optimizer", ["agd", "sgd", "adam"])
def test_divergence_stops_every_optimiser_at_its_step_and_keeps_a_finite_checkpoint(tmp_path, optimizer):
    cfg = _ufm(tmp_path, optimizer=optimizer, lr=None if optimizer == "agd" else 0.01, epochs=6,
               nonfinite_check_every=20)
    tr = Trainer(cfg, callbacks=[_blow_up_at(5)])
    # Blown up after the check of step 5: caught at step 6, before epoch 3's checkpoint.
    with pytest.raises(NonFiniteError, match=r"non-finite loss, features or parameters at epoch 3, step 2 of 2 "
                                             r"\(global step 6\); training stopped, the last good checkpoint .*epoch 2"):
        tr.fit()
    state = torch.load(tr.checkpoint_path, weights_only=True)
    assert state["epoch"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert json.loads((tr.run_dir / "provenance.json").read_text())["status"] == "failed: non-finite"


def test_a_state_gone_bad_at_an_epoch_end_is_neither_checkpointed_nor_evaluated(tmp_path):
    def poison(event, trainer):
        if event == "epoch_end" and trainer.epoch == 2:
            with torch.no_grad():
                trainer.network.backbone.features.fill_(float("nan"))

    tr = Trainer(_ufm(tmp_path, epochs=4), callbacks=[poison])
    with pytest.raises(NonFiniteError, match=r"non-finite backbone.features after epoch 2 .* epoch 1\) is intact"):
        tr.fit()
    assert torch.load(tr.checkpoint_path, weights_only=True)["epoch"] == 1


def test_a_diverged_grid_run_exits_3_and_records_nothing(tmp_path, capsys, monkeypatch):
    spec = _spec(tmp_path, TINY.replace("methods: [standard, implicit]", "methods: [implicit]"))
    real = runner.train_run
    monkeypatch.setattr(runner, "train_run", lambda cfg, **kw: real(cfg, callbacks=[_blow_up_at(1)], **kw))
    rc, err = _cli(capsys, spec, "--out", tmp_path / "o", "--work-dir", tmp_path / "w")
    assert rc == 3 and "\n" not in err
    assert "non-finite loss, features or parameters at epoch 2, step 1 of 1 (global step 2)" in err
    assert not (tmp_path / "w" / "ufm10" / "default" / "implicit" / "0" / "record.json").exists()


def test_a_nan_is_never_summarised_as_a_number():
    rows = [{"config": "c", "variant": "v", "method": "m", "seed": s, "train_nc1": x, "train_top1": 0.5}
            for s, x in enumerate([float("nan"), float("nan")])]
    cell = summarize_records(rows)["c/v/m"]
    assert "train_nc1" not in cell and cell["train_top1"]["median"] == 0.5
    mixed = summarize_records([dict(rows[0]), dict(rows[1], train_nc1=0.25)])["c/v/m"]["train_nc1"]
    assert mixed["values"] == [0.25] and mixed["missing"] == 1
    table = runner.format_summary(summarize_records(rows), ["train_nc1", "train_top1"])
    assert "0 [0, 0]" not in table and " -" in table.splitlines()[1]


# ------------------------------------------------------------------ 7. writes stay inside
def test_an_experiment_name_that_would_leave_its_directory_is_refused(tmp_path):
    bad = tmp_path / "...yaml"
    bad.write_text("configs: [ufm10]\n")
    with pytest.raises(ConfigError, match=r"the experiment's name \(its file name\) must be a plain name.*'\.\.'"):
        load_experiment(bad)
    with pytest.raises(ConfigError, match="must be a plain name"):
        results_dir("..")


def test_no_write_follows_a_planted_symbolic_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "cosine_margins_final.npz").symlink_to(victim)
    (run / "results.json").symlink_to(victim)
    train_run(_ufm(tmp_path, run_dir=str(run), epochs=2, save_margins=True))
    assert victim.read_text() == "precious\n"
    assert not (run / "cosine_margins_final.npz").is_symlink() and not (run / "results.json").is_symlink()
    import numpy as np

    with np.load(run / "cosine_margins_final.npz") as f:
        assert f["train"].shape == (32,)
    # The epoch log, appended between checkpoints: refused, not followed.
    def plant(event, trainer):
        if event == "epoch_end" and trainer.epoch == 1:
            (trainer.run_dir / "metrics.jsonl").unlink()
            (trainer.run_dir / "metrics.jsonl").symlink_to(victim)

    with pytest.raises(ConfigError, match="metrics.jsonl is a symbolic link"):
        Trainer(_ufm(tmp_path / "b", epochs=4, checkpoint_every=3), callbacks=[plant]).fit()
    assert victim.read_text() == "precious\n"
    # The result files: a link in their place is replaced, its target untouched.
    d = tmp_path / "out"
    d.mkdir()
    (d / "runs.csv").symlink_to(victim)
    provenance.atomic_write_files(d, {"runs.csv": "a\n"})
    assert victim.read_text() == "precious\n" and not (d / "runs.csv").is_symlink()
