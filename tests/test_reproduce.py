"""Experiment grids: spec parsing, the grid of runs, tidy results, provenance, resume, errors."""
import csv
import json
import math

import pytest
from conftest import in_git_checkout

from guiding_nc.experiments import measures
from guiding_nc.experiments import runner, store
from guiding_nc.experiments.results import DirLock, load_results, results_dir
from guiding_nc.experiments.spec import list_experiments, load_experiment, run_key_of
from guiding_nc.training.config import ConfigError, load_config


def _write(tmp_path, text, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_every_shipped_experiment_loads_and_every_run_validates():
    names = list_experiments()
    assert {"ufm10", "ufm_scaling", "ufm_scaling_cpu", "real_offline", "real_images", "ablations"} <= set(names)
    for name in names:
        for spec in (load_experiment(name), load_experiment(name).quick_spec()):
            jobs = spec.jobs()
            assert jobs, name
            for job in jobs:  # a typo in any override fails here, not an hour into a run
                cfg = load_config(job["config"], {**job["overrides"], "method": job["method"], "seed": job["seed"]})
                cfg.validate()


def test_paper_experiments_keep_the_paper_protocol():
    for name in ("ufm10", "ufm_scaling", "real_images"):
        spec = load_experiment(name)
        assert spec.seeds == [0, 1, 2, 3, 4] and spec.methods == ["standard", "fixed", "implicit"]
        for job in spec.jobs():
            cfg = load_config(job["config"], job["overrides"])
            assert (cfg.optimizer, cfg.gain, cfg.delta, cfg.tau, cfg.stratified_batches) == ("agd", 10.0, 1e-3, 5.0, True)
            if cfg.is_ufm:
                assert cfg.epochs == 2000 and cfg.batch_size == cfg.num_samples
    assert load_experiment("ufm_scaling_cpu").notes  # a reduced budget says why


def test_grid_variants_config_seeds_and_quick_merge(tmp_path):
    p = _write(tmp_path, """
configs: [ufm10, ufm100]
methods: [standard, implicit]
seeds: [0, 1, 2]
overrides: {epochs: 7}
config_overrides:
  ufm100: {seeds: [1], epochs: 3}
variants:
  a: {}
  b: {methods: [implicit], overrides: {delta: 0.1}}
quick:
  seeds: [1, 2]
  variants: [b]
  config_overrides:
    ufm10: {num_samples: 40}
""")
    spec = load_experiment(p)
    jobs = spec.jobs()
    keys = {(j["config"], j["variant"], j["method"], j["seed"]) for j in jobs}
    assert len(jobs) == 3 * 3 + 1 * 3  # ufm10: (a: 2 methods + b: 1) x 3 seeds; ufm100: 3 x seed 1
    assert ("ufm100", "a", "standard", 1) in keys and ("ufm100", "a", "standard", 0) not in keys
    b = next(j for j in jobs if j["variant"] == "b")
    assert b["overrides"]["delta"] == 0.1 and b["method"] == "implicit"
    assert next(j for j in jobs if j["config"] == "ufm100")["overrides"]["epochs"] == 3
    q = spec.quick_spec()
    qjobs = q.jobs()
    assert {j["variant"] for j in qjobs} == {"b"}
    assert {j["seed"] for j in qjobs if j["config"] == "ufm10"} == {1, 2}
    assert {j["seed"] for j in qjobs if j["config"] == "ufm100"} == {1}
    u10 = next(j for j in qjobs if j["config"] == "ufm10")["overrides"]
    assert u10["num_samples"] == 40 and u10["epochs"] == 7


@pytest.mark.parametrize("text, match", [
    ("configs: [ufm10]\nbogus: 1\n", "unknown experiment key"),
    ("methods: [standard]\n", "non-empty 'configs'"),
    ("configs: [ufm10]\nvariants: {a: {what: 1}}\n", "variant 'a'"),
    ("configs: [ufm10]\nquick: {epochs: 3}\n", "unknown quick key"),
])
def test_bad_experiment_files_are_named(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_experiment(_write(tmp_path, text))


def test_unknown_experiment_lists_the_known_ones():
    with pytest.raises(ConfigError, match="Known experiments: .*ufm10"):
        load_experiment("no_such_experiment")


def test_bad_override_fails_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key"):
        runner.run_experiment("ufm10", quick=True, out=tmp_path / "o", work_dir=tmp_path / "w", overrides={"epoch": 3},
                          progress=False)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="no config"):
        runner.run_experiment("ufm10", quick=True, configs=["ufm100"], out=tmp_path / "o", progress=False)


QUICK = """
configs: [ufm10]
seeds: [0, 1]
overrides: {num_samples: 40, feature_dim: 16, batch_size: 40, epochs: 12, eval_every: 4, device: cpu}
record_step_accuracy: true
save_margins: true
"""


def test_quick_experiment_end_to_end(tmp_path):
    spec = load_experiment(_write(tmp_path, QUICK))
    out, work = tmp_path / "out", tmp_path / "work"
    res = runner.run_experiment(spec, out=out, work_dir=work, progress=False, num_threads=1)
    assert len(res["records"]) == 6
    loaded = load_results(out)
    runs = loaded["runs"]
    assert sorted((r["method"], r["seed"]) for r in runs) == sorted(
        (m, s) for m in ("standard", "fixed", "implicit") for s in (0, 1))
    for r in runs:
        assert r["status"] == "completed" and r["steps"] == 12 and r["optimizer"] == "agd"
        assert 0.0 <= r["train_top1"] <= 1.0 and r["train_loss"] > 0
        acc = loaded["step_accuracy"][f"ufm10/default/{r['method']}/{r['seed']}"]
        assert len(acc) == 12
        assert r["steps_to_fit"] == measures.first_fit_step(acc)
        assert len(loaded["margins"][f"ufm10/default/{r['method']}/{r['seed']}"]) == 40
    epochs = sorted({c["epoch"] for c in loaded["curves"] if c["method"] == "implicit" and c["seed"] == 0})
    assert epochs == [4, 8, 12]
    # summary.json is exactly what the rows give (no number in it is written by hand)
    assert loaded["summary"] == json.loads(json.dumps(store.summarize_records(runs)))
    prov = loaded["provenance"]
    assert prov["status"] == "completed" and prov["runs_done"] == prov["runs_total"] == 6
    assert prov["torch"] and prov["run_commits"]
    assert bool(prov["git"]["commit"]) == in_git_checkout()  # none to record from a source tarball
    assert prov["command"].startswith("python -m guiding_nc.experiments.reproduce ")  # what reruns it
    assert prov["runs_wall_time_s"] == pytest.approx(sum(r["wall_time_s"] for r in runs))


def test_rerun_skips_finished_runs_and_continues_an_interrupted_one(tmp_path, monkeypatch):
    spec = load_experiment(_write(tmp_path, QUICK))
    out, work = tmp_path / "out", tmp_path / "work"
    calls, crashed = [], []
    real = runner.train_run

    def flaky(cfg, **kw):
        calls.append((cfg.method, cfg.seed))
        if len(calls) == 3 and not crashed:
            crashed.append(True)
            raise RuntimeError("simulated crash")  # the third run dies
        return real(cfg, **kw)

    monkeypatch.setattr(runner, "train_run", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        runner.run_experiment(spec, out=out, work_dir=work, progress=False)
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == 2  # both finished runs were written before the interrupt
    assert json.loads((out / "provenance.json").read_text())["status"] == "running"
    calls.clear()
    runner.run_experiment(spec, out=out, work_dir=work, progress=False)
    assert len(calls) == 4  # the two finished runs are not trained again
    assert len(list(csv.DictReader((out / "runs.csv").open()))) == 6


def test_grid_run_in_slices_merges_into_one_result_directory(tmp_path, monkeypatch):
    # An experiment too long for one sitting runs slice by slice (--seeds here) into one
    # directory: each invocation trains only its slice, the files hold every finished run of the
    # grid in grid order, and the status says "partial" until the whole grid is there.
    spec = load_experiment(_write(tmp_path, QUICK))
    out, work = tmp_path / "out", tmp_path / "work"
    calls = []
    real = runner.train_run
    monkeypatch.setattr(runner, "train_run", lambda cfg, **kw: calls.append((cfg.method, cfg.seed)) or real(cfg, **kw))
    first = runner.run_experiment(spec, out=out, work_dir=work, progress=False, seeds=[1])
    assert first["status"] == "partial" and sorted(calls) == [("fixed", 1), ("implicit", 1), ("standard", 1)]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["status"] == "partial" and prov["runs_done"] == 3 and prov["runs_total"] == 6
    assert prov["runs_from_earlier_invocations"] == []
    calls.clear()
    second = runner.run_experiment(spec, out=out, work_dir=work, progress=False, seeds=[0])
    assert sorted(calls) == [("fixed", 0), ("implicit", 0), ("standard", 0)]  # seed 1 not trained again
    assert second["status"] == "completed"
    res = load_results(out)
    assert [(r["method"], r["seed"]) for r in res["runs"]] == [(m, s) for m in ("standard", "fixed", "implicit")
                                                                  for s in (0, 1)]
    assert res["summary"] == json.loads(json.dumps(store.summarize_records(res["runs"])))
    assert set(res["step_accuracy"]) == {run_key_of(r) for r in res["runs"]}
    prov = res["provenance"]
    assert prov["status"] == "completed" and prov["runs_done"] == prov["runs_total"] == 6
    assert prov["runs_from_earlier_invocations"] == [f"ufm10/default/{m}/1" for m in ("fixed", "implicit", "standard")]
    # Each run's own command is kept: one invocation per slice, each naming its own seeds.  (Both
    # slices can start within the same second here, so the date order of the two may tie.)
    by_seeds = {inv["command"].split("--seeds ")[1].split()[0]: sorted(inv["runs"]) for inv in prov["invocations"]}
    assert len(prov["invocations"]) == 2
    assert by_seeds == {str(s): [f"ufm10/default/{m}/{s}" for m in ("fixed", "implicit", "standard")] for s in (1, 0)}
    from guiding_nc.experiments.results import provenance_caption
    assert provenance_caption(prov).count("slice   : 3 runs by `python -m guiding_nc.experiments.reproduce") == 2
    assert {k for inv in prov["invocations"] for k in inv["runs"]} == {run_key_of(r) for r in res["runs"]}
    # A slice with another setting never drops the runs the files hold: it stops before any run...
    calls.clear()
    snapshot = _files(out)
    with pytest.raises(ConfigError, match=r"holds 6 run\(s\) made with other settings.*--out DIR.*--replace"):
        runner.run_experiment(spec, out=out, work_dir=work, progress=False, seeds=[0], overrides={"delta": 0.5})
    assert calls == [] and _files(out) == snapshot
    # ... unless asked to replace them; a finished run made with other settings is then not merged in.
    with pytest.warns(UserWarning, match="not made with the settings"):
        third = runner.run_experiment(spec, out=out, work_dir=work, progress=False, seeds=[0], overrides={"delta": 0.5},
                                  replace=True)
    assert third["status"] == "partial" and len(third["records"]) == 3 and len(calls) == 3


def test_concurrent_slices_do_not_overwrite_each_other(tmp_path, monkeypatch):
    # Two slices at the same time: slice B (seed 0) starts after slice A (seed 1) and finishes
    # while A is still training.  A's last write must still hold B's runs: every write re-reads
    # the work directory under a lock on the result directory.
    spec = load_experiment(_write(tmp_path, QUICK))
    out, work = tmp_path / "out", tmp_path / "work"
    real = runner.train_run
    state = {"b_done": False}

    def train_a(cfg, **kw):
        if not state["b_done"]:
            state["b_done"] = True
            monkeypatch.setattr(runner, "train_run", real)
            runner.run_experiment(spec, out=out, work_dir=work, progress=False, seeds=[0])  # slice B, whole
            assert load_results(out)["provenance"]["runs_done"] == 3
            monkeypatch.setattr(runner, "train_run", train_a)
        return real(cfg, **kw)

    monkeypatch.setattr(runner, "train_run", train_a)
    a = runner.run_experiment(spec, out=out, work_dir=work, progress=False, seeds=[1])
    assert a["status"] == "completed" and len(a["records"]) == 6
    res = load_results(out)
    assert res["provenance"]["status"] == "completed" and len(res["runs"]) == 6
    assert sorted(res["provenance"]["runs_from_earlier_invocations"]) == [
        f"ufm10/default/{m}/0" for m in ("fixed", "implicit", "standard")]
    assert list(out.iterdir()) and not [p for p in out.iterdir() if p.name.startswith(".")]  # no lock file left


def _files(out):
    return {name: (out / name).read_text() for name in ("runs.csv", "curves.csv", "step_accuracy.json", "margins.json")}


def test_a_slice_in_a_fresh_clone_keeps_the_committed_runs(tmp_path, monkeypatch):
    # Committed results come without the work directory that made them (it stays on the machine
    # that ran them).  A later slice run from a fresh clone must keep those runs in the files, not
    # rewrite the files with only the runs its own work directory holds, and must not train them again.
    spec = load_experiment(_write(tmp_path, QUICK))
    out = tmp_path / "out"
    runner.run_experiment(spec, out=out, work_dir=tmp_path / "work_a", progress=False, seeds=[1])
    before = load_results(out)
    first_command = before["provenance"]["command"]
    assert set(before["provenance"]["run_sources"]) == {f"ufm10/default/{m}/1" for m in ("standard", "fixed", "implicit")}
    calls = []
    real = runner.train_run
    monkeypatch.setattr(runner, "train_run", lambda cfg, **kw: calls.append((cfg.method, cfg.seed)) or real(cfg, **kw))
    res = runner.run_experiment(spec, out=out, work_dir=tmp_path / "work_b", progress=False)  # the whole grid
    assert sorted(calls) == [("fixed", 0), ("implicit", 0), ("standard", 0)]  # seed 1 is in the files already
    assert res["status"] == "completed" and len(res["records"]) == 6
    after = load_results(out)
    assert len(after["runs"]) == 6
    seed1 = lambda rows: [r for r in rows if r["seed"] == 1]
    assert seed1(after["runs"]) == seed1(before["runs"])  # kept exactly: every column, every value
    assert seed1(after["curves"]) == seed1(before["curves"])
    for k in before["step_accuracy"]:
        assert after["step_accuracy"][k] == before["step_accuracy"][k]
        assert after["margins"][k] == before["margins"][k]
    assert after["summary"] == json.loads(json.dumps(store.summarize_records(after["runs"])))
    prov = after["provenance"]
    kept = [f"ufm10/default/{m}/1" for m in ("fixed", "implicit", "standard")]
    assert prov["runs_kept_from_results"] == kept and prov["runs_from_earlier_invocations"] == kept
    # Each run still names the command, commit and settings hash that made it.
    assert {inv["command"] for inv in prov["invocations"]} == {first_command, prov["command"]}
    assert all(prov["run_sources"][k]["settings_hash"] for k in prov["run_sources"])
    assert prov["run_sources"]["ufm10/default/fixed/1"]["command"] == first_command
    # Rewriting the files again from a third, empty work directory changes no run.
    snapshot = _files(out)
    runner.run_experiment(spec, out=out, work_dir=tmp_path / "work_c", progress=False)
    assert _files(out) == snapshot


def test_committed_runs_with_other_settings_are_not_kept(tmp_path):
    spec = load_experiment(_write(tmp_path, QUICK))
    out = tmp_path / "out"
    runner.run_experiment(spec, out=out, work_dir=tmp_path / "work_a", progress=False, seeds=[1])
    with pytest.raises(ConfigError, match="holds 3 run"):
        runner.run_experiment(spec, out=out, work_dir=tmp_path / "work_b", progress=False, seeds=[0],
                          overrides={"delta": 0.5})
    with pytest.warns(UserWarning, match="3 run\\(s\\) not made with the settings of experiment 'exp'"):
        res = runner.run_experiment(spec, out=out, work_dir=tmp_path / "work_b", progress=False, seeds=[0],
                                overrides={"delta": 0.5}, replace=True)
    assert res["status"] == "partial" and {r["row"]["seed"] for r in res["records"]} == {0}
    assert load_results(out)["provenance"]["runs_kept_from_results"] == []


def test_result_files_from_before_settings_hashes_are_kept_only_for_the_same_spec(tmp_path):
    # Files written before run_sources existed carry no per-run settings hash: their runs are kept
    # when the experiment spec recorded in the file is the present one, and refused otherwise.
    spec = load_experiment(_write(tmp_path, QUICK))
    out = tmp_path / "out"
    runner.run_experiment(spec, out=out, work_dir=tmp_path / "work_a", progress=False, seeds=[1])
    prov_path = out / "provenance.json"
    legacy = json.loads(prov_path.read_text())
    del legacy["run_sources"]
    prov_path.write_text(json.dumps(legacy))
    # Only the implicit run: the learned and fixed heads changed definition since (their logits are
    # centred now), and a run without a settings hash cannot show which definition made it.
    with pytest.warns(UserWarning, match="2 run"):
        records, sources = store._results_records(out, spec, "full", tmp_path / "work_b", "auto", None)
    assert set(records) == {"ufm10/default/implicit/1"} and all(m["settings_hash"] is None for m in sources.values())
    assert {m["command"] for m in sources.values()} == {legacy["command"]}
    # Older still: no per-command record either. The files' own list of the commits that made
    # their runs is kept, not lost to "unknown".
    oldest = {k: v for k, v in legacy.items() if k != "invocations"}
    prov_path.write_text(json.dumps(oldest))
    with pytest.warns(UserWarning, match="2 run"):
        _, sources = store._results_records(out, spec, "full", tmp_path / "work_b", "auto", None)
    assert {m["commit"] for m in sources.values()} == {" or ".join(legacy["run_commits"])}
    prov_path.write_text(json.dumps(legacy))
    other = dict(legacy, config=dict(legacy["config"], spec=dict(legacy["config"]["spec"], overrides={"epochs": 99})))
    prov_path.write_text(json.dumps(other))
    with pytest.warns(UserWarning, match="not made with the settings"):
        assert store._results_records(out, spec, "full", tmp_path / "work_b", "auto", None) == ({}, {})


def test_result_directory_lock_is_exclusive(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    import os

    with DirLock(tmp_path, "exclusive"):
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on leaving the block
    finally:
        os.close(fd)


def test_result_directory_lock_refused_warns_and_goes_on(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")

    def refuse(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    with pytest.warns(UserWarning, match="cannot lock .*No locks available"):
        with DirLock(tmp_path, "exclusive") as lock:
            assert lock.fd is None  # nothing held, nothing to release


def test_changed_config_is_not_served_from_an_old_record(tmp_path, monkeypatch):
    p = _write(tmp_path, QUICK.replace("seeds: [0, 1]", "seeds: [0]").replace("epochs: 12", "epochs: 4")
               .replace("eval_every: 4", "eval_every: 2"))
    out, work = tmp_path / "out", tmp_path / "work"
    runner.run_experiment(p, out=out, work_dir=work, progress=False, methods=["fixed"])
    calls = []
    real = runner.train_run
    monkeypatch.setattr(runner, "train_run", lambda cfg, **kw: calls.append(cfg.delta) or real(cfg, **kw))
    with pytest.warns(UserWarning, match="not made with the settings"):
        runner.run_experiment(p, out=out, work_dir=work, progress=False, methods=["fixed"], overrides={"delta": 0.5},
                          replace=True)
    assert calls == [0.5]
    # the earlier run is kept aside, not deleted
    assert len(list((work / "ufm10" / "default" / "fixed").glob("0.superseded-*"))) == 1


def test_minibatch_runs_record_no_steps_to_fit(tmp_path):
    p = _write(tmp_path, """
configs: [digits_mlp]
methods: [implicit]
seeds: [0]
overrides: {epochs: 1, report_epochs: [1], max_train_samples: 200, max_test_samples: 100, batch_size: 50, device: cpu}
record_step_accuracy: true
""")
    runner.run_experiment(p, out=tmp_path / "o", work_dir=tmp_path / "w", progress=False)
    res = load_results(tmp_path / "o")
    assert "steps_to_fit" not in res["runs"][0] or res["runs"][0]["steps_to_fit"] is None
    assert res["step_accuracy"] == {}
    assert 0 <= res["runs"][0]["test_top1@1"] <= 1
    assert int(res["runs"][0]["num_classes"]) == 10  # inferred from the data, the config leaves it out


def test_summarize_records_median_range_and_missing():
    rows = [{"config": "c", "variant": "v", "method": "m", "seed": s, "train_top1": t, "steps_to_fit": f,
             "fitted": f is not None} for s, t, f in [(0, 0.5, 3), (1, 0.7, None), (2, 0.9, 5)]]
    cell = store.summarize_records(rows)["c/v/m"]
    assert cell["seeds"] == [0, 1, 2]
    assert (cell["train_top1"]["median"], cell["train_top1"]["min"], cell["train_top1"]["max"]) == (0.7, 0.5, 0.9)
    assert cell["steps_to_fit"]["median"] == 4 and cell["steps_to_fit"]["missing"] == 1
    nan_rows = [{"config": "c", "variant": "v", "method": "m", "seed": 0, "train_nc1": math.nan}]
    assert "train_nc1" not in store.summarize_records(nan_rows)["c/v/m"]
    # steps to fit not measured (mini-batch rows, empty after a CSV round trip): no cell at all
    mb = [{"config": "c", "variant": "v", "method": "m", "seed": 0, "steps_to_fit": None, "fitted": None}]
    assert "steps_to_fit" not in store.summarize_records(mb)["c/v/m"]
    never = [{"config": "c", "variant": "v", "method": "m", "seed": 0, "steps_to_fit": None, "fitted": False}]
    assert store.summarize_records(never)["c/v/m"]["steps_to_fit"]["missing"] == 1


def test_load_results_says_how_to_make_missing_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="guiding_nc.experiments.reproduce"):
        load_results(tmp_path)


def test_cli_list_and_bad_arguments(capsys):
    assert runner.main(["--list"]) == 0
    assert "ufm_scaling_cpu" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        runner.main(["ufm10", "--quick", "not-a-key-value"])
    with pytest.raises(SystemExit):
        runner.main([])


@pytest.mark.parametrize("name", ["ufm10", "ufm_scaling_cpu", "real_offline", "real_offline_200", "real_offline_cnn_200",
                                  "ablations"])
def test_committed_results_are_what_their_rows_say(name):
    """The committed tidy files agree with each other (summary recomputed from runs.csv) and
    carry their provenance; skipped while an experiment's results are not committed."""
    path = results_dir(name)
    if not (path / "runs.csv").exists():
        pytest.skip(f"no committed results for {name}")
    res = load_results(path)
    assert res["summary"] == json.loads(json.dumps(store.summarize_records(res["runs"])))
    prov = res["provenance"]
    assert prov["experiment"] == name and prov["command"] and prov["run_commits"] and prov["date"]
    assert prov["status"] == "completed" and prov["runs_done"] == prov["runs_total"] == len(res["runs"])
    spec = load_experiment(name)
    assert {run_key_of(r) for r in res["runs"]} == {run_key_of(j) for j in spec.jobs()}


def test_committed_slices_of_the_paper_budget_grid_are_consistent():
    """The paper-budget UFM grid is committed slice by slice: whatever is there agrees with itself,
    belongs to the grid, and every run is accounted for by one recorded command."""
    path = results_dir("ufm_scaling")
    if not (path / "runs.csv").exists():
        pytest.skip("no committed results for ufm_scaling")
    res = load_results(path)
    assert res["summary"] == json.loads(json.dumps(store.summarize_records(res["runs"])))
    prov = res["provenance"]
    keys = {run_key_of(r) for r in res["runs"]}
    spec = load_experiment("ufm_scaling")
    assert keys <= {run_key_of(j) for j in spec.jobs()}
    assert prov["runs_done"] == len(res["runs"]) and prov["runs_total"] == len(spec.jobs())
    assert prov["status"] == ("completed" if len(keys) == len(spec.jobs()) else "partial")
    assert sorted(k for inv in prov["invocations"] for k in inv["runs"]) == sorted(keys)
    for r in res["runs"]:
        assert r["status"] == "completed" and r["steps"] == 2000 and r["fitted"] is True
        assert len(res["step_accuracy"][run_key_of(r)]) == 2000


def test_a_resumed_run_names_the_commits_of_all_its_processes(tmp_path):
    run = tmp_path / "work" / "ufm10" / "default" / "implicit" / "0"
    run.mkdir(parents=True)
    (run / "provenance.json").write_text(json.dumps({
        "command": "python -m guiding_nc.experiments.reproduce x", "git": {"commit": "b" * 40, "dirty": False},
        "date": "2026-12-02T12:00:00+00:00", "device": "cpu",
        "resumed_segments": [{"commit": "a" * 40, "dirty": True, "until_epoch": 1750}]}))
    meta = store._run_meta(tmp_path / "work", "ufm10/default/implicit/0", "h")
    assert meta["commit"] == "b" * 40 and meta["earlier_commits"] == ["a" * 40 + "-dirty"]
    assert store._run_commits({"k": meta}) == ["a" * 40 + "-dirty", "b" * 40]


def test_learning_rate_rule_picks_the_fastest_then_the_smaller_then_the_lowest_loss():
    from guiding_nc.experiments.lr_selection import select_learning_rates, selection_table

    def row(c, opt, lr, seed, steps, loss=0.1):
        return {"config": c, "variant": f"{opt}_{lr}", "method": "standard", "seed": seed, "optimizer": opt, "lr": lr,
                "steps_to_loss": steps, "reached_loss": steps is not None, "train_loss": loss}

    runs = [row("ufm10", "adam", 1e-3, 0, 50), row("ufm10", "adam", 1e-3, 1, 60),
            row("ufm10", "adam", 1e-2, 0, 20), row("ufm10", "adam", 1e-2, 1, None),  # median: infinite
            row("ufm10", "sgd", 1.0, 0, 30), row("ufm10", "sgd", 1.0, 1, 30), row("ufm10", "sgd", 10.0, 0, 30), row("ufm10", "sgd", 10.0, 1, 30),
            row("ufm100", "sgd", 1.0, 0, None, 0.5), row("ufm100", "sgd", 10.0, 0, None, 0.4)]
    assert select_learning_rates(runs) == {"ufm10": {"adam": 1e-3, "sgd": 1.0}, "ufm100": {"sgd": 10.0}}
    table = selection_table(runs)
    assert "| UFM-10 (N=1000) | Adam | **0.001** | 55 (2) |" in table and "never" in table


def test_variant_config_overrides_apply_per_config(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("configs: [ufm10, ufm100]\nmethods: [standard]\nseeds: [0]\n"
                 "variants:\n  adam: {overrides: {optimizer: adam}, config_overrides: {ufm10: {lr: 0.1}, ufm100: {lr: 0.01}}}\n")
    spec = load_experiment(p)
    lrs = {j["config"]: j["overrides"]["lr"] for j in spec.jobs()}
    assert lrs == {"ufm10": 0.1, "ufm100": 0.01}
    assert all(j["overrides"]["optimizer"] == "adam" for j in spec.jobs())


def test_command_line_overrides_win_over_the_experiments_own(tmp_path):
    # ufm10's quick mode sets epochs and feature_dim per config; a command-line override wins.
    spec = load_experiment("ufm10").quick_spec()
    spec.cli_overrides = {"epochs": 7, "feature_dim": 64}
    for job in spec.jobs():
        cfg = load_config(job["config"], job["overrides"])
        assert (cfg.epochs, cfg.feature_dim) == (7, 64)
    res = runner.run_experiment("ufm10", quick=True, seeds=[0], methods=["fixed"], overrides={"epochs": 3},
                            out=tmp_path / "o", work_dir=tmp_path / "w", progress=False)
    assert res["records"][0]["row"]["epochs"] == 3
    assert load_results(tmp_path / "o")["provenance"]["config"]["spec"]["cli_overrides"] == {"epochs": 3}


def test_a_moved_work_directory_is_not_trained_again(tmp_path, monkeypatch):
    spec = load_experiment(_write(tmp_path, QUICK.replace("seeds: [0, 1]", "seeds: [0]")))
    runner.run_experiment(spec, out=tmp_path / "o1", work_dir=tmp_path / "w1", progress=False)
    (tmp_path / "w1").rename(tmp_path / "w2")
    calls = []
    monkeypatch.setattr(runner, "train_run", lambda cfg, **kw: calls.append(cfg) or {})
    res = runner.run_experiment(spec, out=tmp_path / "o2", work_dir=tmp_path / "w2", progress=False)
    assert calls == [] and res["status"] == "completed" and len(res["records"]) == 3


def test_a_run_another_slice_is_training_is_not_trained_twice(tmp_path, monkeypatch):
    spec = load_experiment(_write(tmp_path, QUICK.replace("seeds: [0, 1]", "seeds: [0]")))
    work = tmp_path / "w"
    busy = work / "ufm10" / "default" / "fixed" / "0"
    calls = []
    real = runner.train_run
    monkeypatch.setattr(runner, "train_run", lambda cfg, **kw: calls.append(cfg.method) or real(cfg, **kw))
    with store.run_lock(busy) as mine:  # as an overlapping slice would hold it
        assert mine
        with store.run_lock(busy) as other:
            assert not other
        res = runner.run_experiment(spec, out=tmp_path / "o", work_dir=work, progress=False)
    assert sorted(calls) == ["implicit", "standard"] and res["status"] == "partial"


def test_experiment_names_that_would_leave_the_work_directory_are_refused(tmp_path):
    for bad in ("configs: [../../x]", "configs: [ufm10]\nvariants: {'a/b': {}}"):
        p = tmp_path / "bad.yaml"
        p.write_text(bad + "\n")
        with pytest.raises(ConfigError, match="must be a plain name"):
            load_experiment(p)


def test_settings_hash_reads_an_explicit_model_default_as_its_absence():
    a = load_config("digits_mlp", {"final_activation": True, "model_kwargs.feature_batch_norm": False})
    b = load_config("digits_mlp", {"final_activation": True, "model_kwargs": {"hidden": [128, 128]}})  # MLP defaults
    c = load_config("digits_mlp")  # the protocol's own: final_activation false
    assert store.settings_hash(a) == store.settings_hash(b) != store.settings_hash(c)
    # The same place-free settings from another work directory or data folder.
    assert store.settings_hash(a) == store.settings_hash(a.replace(run_dir="/elsewhere", data_root="/data"))


def test_the_head_start_free_comparison_uses_the_rates_its_rule_picks():
    """The learning rates written in ufm_no_head_start.yaml are the ones the stated rule picks
    from the committed grid, and only the standard classifier's runs chose them."""
    from guiding_nc.experiments.lr_selection import select_learning_rates

    grid = results_dir("ufm_lr_selection")
    if not (grid / "runs.csv").exists():
        pytest.skip("no committed learning-rate grid")
    runs = load_results(grid)["runs"]
    assert {r["method"] for r in runs} == {"standard"} and {r["seed"] for r in runs}.isdisjoint({0, 1, 2, 3, 4})
    chosen = select_learning_rates(runs)
    spec = load_experiment("ufm_no_head_start")
    for opt in ("adam", "sgd"):
        written = spec.variants[opt]["config_overrides"]
        assert {c: v["lr"] for c, v in written.items()} == {c: chosen[c][opt] for c in spec.configs}
    for job in spec.jobs():  # same budget, thresholds and start for every method
        cfg = load_config(job["config"], job["overrides"])
        assert cfg.epochs == 300 and cfg.model_kwargs["init"] == "mean_free" and cfg.weight_decay == 0.0


def test_a_full_run_refuses_a_tree_whose_code_differs_from_its_commit(tmp_path, monkeypatch):
    import guiding_nc.training.provenance as prov

    monkeypatch.delenv("GUIDING_NC_ALLOW_DIRTY", raising=False)
    monkeypatch.setattr(prov, "git_info", lambda path=None: {"commit": "a" * 40, "dirty": True, "branch": "main"})
    spec = load_experiment(_write(tmp_path, QUICK))
    with pytest.raises(ConfigError, match="commit first, or pass --allow-dirty"):
        runner.run_experiment(spec, out=tmp_path / "o", work_dir=tmp_path / "w", progress=False)
    assert not (tmp_path / "o").exists()
    runner.run_experiment(spec, out=tmp_path / "o", work_dir=tmp_path / "w", progress=False, seeds=[0], allow_dirty=True)
    assert load_results(tmp_path / "o")["provenance"]["git"]["dirty"] is True  # recorded
    runner.run_experiment(spec, quick=True, out=tmp_path / "q", work_dir=tmp_path / "wq", progress=False)  # quick: no check


def test_only_source_and_config_changes_make_a_tree_dirty(tmp_path):
    import subprocess

    from guiding_nc.training.provenance import git_info

    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, capture_output=True, check=True)
    run("init", "-q")
    for f in ("src/m.py", "book/p.md", "data/results/x.csv", "pyproject.toml"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("a\n")
    run("add", "-A")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "book/p.md").write_text("b\n")
    (tmp_path / "data/results/x.csv").write_text("b\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert git_info(tmp_path)["dirty"] is False  # the book, results and stray files do not count
    (tmp_path / "src/m.py").write_text("b\n")
    assert git_info(tmp_path)["dirty"] is True


def test_remake_dirty_trains_again_only_the_runs_made_from_uncommitted_code(tmp_path, monkeypatch):
    spec = load_experiment(_write(tmp_path, QUICK))
    out = tmp_path / "out"
    runner.run_experiment(spec, out=out, work_dir=tmp_path / "work", progress=False, seeds=[0])
    # The files say one run came from a tree with uncommitted changes (as older result files do).
    prov = json.loads((out / "provenance.json").read_text())
    key = f"{spec.configs[0]}/default/fixed/0"
    for k, meta in prov["run_sources"].items():  # whatever the state of this checkout
        meta["commit"], meta["earlier_commits"] = ("0123456789ab-dirty" if k == key else "0123456789ab"), []
    (out / "provenance.json").write_text(json.dumps(prov))
    calls = []
    real = runner.train_run
    monkeypatch.setattr(runner, "train_run", lambda cfg, **kw: calls.append((cfg.method, cfg.seed)) or real(cfg, **kw))
    runner.run_experiment(spec, out=out, work_dir=tmp_path / "work2", progress=False, seeds=[0])
    assert calls == []  # without the flag every run is kept
    runner.run_experiment(spec, out=out, work_dir=tmp_path / "work3", progress=False, seeds=[0], remake_dirty=True)
    assert calls == [("fixed", 0)]
    sources = json.loads((out / "provenance.json").read_text())["run_sources"]
    assert sources[key]["commit"] != "0123456789ab-dirty" and len(sources) == 3
    assert all(m["commit"] == "0123456789ab" for k, m in sources.items() if k != key)


def test_a_run_lock_is_held_by_one_process_at_a_time(tmp_path):
    pytest.importorskip("fcntl")
    with store.run_lock(tmp_path / "run") as first:
        assert first is True
        with store.run_lock(tmp_path / "run") as second:  # another open file description
            assert second is False
    with store.run_lock(tmp_path / "run") as again:
        assert again is True
    with pytest.raises(ValueError, match="mode"):
        DirLock(tmp_path, "sideways")
