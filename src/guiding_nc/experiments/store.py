"""The result files of an experiment, written and read back by the grid runner
(:mod:`guiding_nc.experiments.runner`), and what makes a finished run count.

* ``runs.csv``: one row per run (final metrics, snapshots at the report epochs, steps to
  100% train accuracy, wall time, peak memory);
* ``curves.csv``: one row per evaluated epoch of every run (loss, top-1, NC1-NC4, equinorm,
  cosine margins, per-step time split);
* ``step_accuracy.json`` / ``step_loss.json``: exact per-step train accuracy (loss) of every
  full-batch run (UFMs), if asked; ``margins.json``: final per-sample cosine margins, if asked;
* ``summary.json``: median and min-max over seeds per (config, variant, method) and metric
  (:func:`~guiding_nc.experiments.results.summarize_records`);
* ``provenance.json``: exact command, experiment spec, mode, seeds, git commit, date, device,
  library versions, wall time and status, each slice's command under ``invocations`` and each
  run's command, commit and settings hash under ``run_sources``.

A run counts only with the settings its grid asks for now: :func:`effective_settings` and
:func:`settings_hash`; :func:`stale_runs` lists the ones that do not.  Finished runs of other
slices are merged in at every write (:func:`write_merged`) under a lock on the result directory;
:class:`run_lock` keeps two slices from training one run.  No write drops a run the files hold:
one with other settings stops the command (:func:`check_results` before it trains, again at every
write, where another command may have written meanwhile) unless ``--replace`` named it at the
start; a missing ``summary.json`` is rebuilt, a missing ``curves.csv`` (or per-step file) rebuilt
from the work directory or refused.  All files of one write are one change
(:func:`~guiding_nc.training.provenance.atomic_write_files`): a crash at any point leaves the last
complete set, and the next write (the same command again) completes or undoes the interrupted one.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from ..training.config import ConfigError, load_config
from ..training.provenance import (atomic_write_files, collect_provenance, json_text, local_command, local_path,
                                   recover_files, result_settings, to_jsonable)
from ..training.tables import csv_text
from .results import RESULT_FILES, DirLock, read_result_files, summarize_records
from .spec import ExperimentSpec, load_experiment, run_config, run_key_of

__all__ = ["stale_runs", "effective_settings", "settings_hash",
           "legacy_config_hash", "finished_record", "read_record", "read_results", "check_results", "write_merged",
           "run_lock", "made_dirty"]

def _run_meta(work_dir: Path, key: str, settings_hash: Optional[str]) -> Dict[str, Any]:
    """Where one finished run came from, read from its own provenance in ``work_dir``: command,
    commit (``-dirty`` when the tree had code changes), device, threads, date and settings hash."""
    p = work_dir / key / "provenance.json"
    try:
        prov = json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p} is damaged ({getattr(exc, 'msg', type(exc).__name__)}), so the run's command and "
                          "commit are unknown: restore it, or delete the run's directory and rerun the same "
                          "command, which then trains that run again") from None
    git = prov.get("git") or {}
    # A run resumed from a checkpoint names the commits of its earlier processes too.
    earlier = [(seg.get("commit") or "unknown") + ("-dirty" if seg.get("dirty") else "")
               for seg in prov.get("resumed_segments") or []]
    return {"command": prov.get("command", "?"),
            "commit": (git.get("commit") or "unknown") + ("-dirty" if git.get("dirty") else ""),
            "earlier_commits": earlier,
            "device": str(prov.get("device_name") or prov.get("device") or "?"),
            "num_threads": prov.get("num_threads"), "first_date": prov.get("date"), "last_date": prov.get("date"),
            "settings_hash": settings_hash}


def made_dirty(meta: Dict[str, Any]) -> bool:
    """Whether a run's recorded provenance (an entry of ``run_sources``) names a commit with
    uncommitted changes, in its last process or an earlier one."""
    commits = [str(meta.get("commit") or ""), *(str(c) for c in meta.get("earlier_commits") or [])]
    return any(c.endswith("-dirty") or "-dirty " in c for c in commits)


def _run_commits(sources: Dict[str, Dict[str, Any]]) -> List[str]:
    """The git commits that produced the runs, in run order: a result rewritten later still names
    the code that computed it."""
    seen: List[str] = []
    for meta in sources.values():
        for c in [*meta.get("earlier_commits", []), meta["commit"]]:
            if c not in seen:
                seen.append(c)
    return seen


def _local_commands(sources: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """``sources`` with every recorded command's absolute paths made local (commands kept from
    older result files may name the machine that ran them)."""
    return {k: dict(m, command=local_command(str(m.get("command", "?")))) for k, m in sources.items()}


def _invocations(sources: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The commands that produced the runs: one entry per (command, commit, device) with its runs,
    first and last date, in order of first use."""
    groups: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
    for k, meta in sources.items():
        commit = meta["commit"]
        if commit.endswith("-dirty"):
            commit = commit[:-len("-dirty")][:12] + "-dirty"
        else:
            commit = commit[:12]
        g = groups.setdefault((local_command(str(meta["command"])), commit, meta["device"]),
                              {"command": local_command(str(meta["command"])), "commit": commit,
                               "device": meta["device"],
                               "num_threads": meta.get("num_threads"), "first_date": meta.get("first_date"),
                               "last_date": meta.get("last_date"), "runs": []})
        g["runs"].append(k)
        d0, d1 = meta.get("first_date"), meta.get("last_date")
        if d0 and (g["first_date"] is None or d0 < g["first_date"]):
            g["first_date"] = d0
        if d1 and (g["last_date"] is None or d1 > g["last_date"]):
            g["last_date"] = d1
    return sorted(groups.values(), key=lambda g: g["first_date"] or "")


def _write_outputs(out: Path, spec: ExperimentSpec, records: Dict[str, Dict[str, Any]], status: str,
                   start: float, mode: str, device: Optional[str], argv: Sequence[str], num_threads,
                   work_dir: Path, sources: Dict[str, Dict[str, Any]], earlier: Iterable[str] = (),
                   kept: Iterable[str] = ()) -> None:
    """Every result file of ``out`` for ``records``, written as one change
    (:func:`~guiding_nc.training.provenance.atomic_write_files`): a crash at any point leaves the
    files of the last write or of this one, never a mix."""
    recs = list(records.values())
    rows = [r["row"] for r in recs]
    lead = ("config", "variant", "method", "seed")
    files: Dict[str, str] = {"runs.csv": csv_text(rows, lead=lead)}
    curve_rows = []
    for r in recs:
        for c in r["curves"]:
            curve_rows.append({**{k: r["row"][k] for k in lead}, **c})
    files["curves.csv"] = csv_text(curve_rows, lead=lead + ("epoch", "step"))
    if spec.record_step_accuracy:
        files["step_accuracy.json"] = json_text({run_key_of(r["row"]): r["step_accuracy"] for r in recs
                                                 if r["step_accuracy"]}, indent=None)
    if spec.record_step_losses:
        files["step_loss.json"] = json_text({run_key_of(r["row"]): r.get("step_loss") for r in recs
                                             if r.get("step_loss")}, indent=None)
    if spec.save_margins:
        files["margins.json"] = json_text({run_key_of(r["row"]): r["margins"] for r in recs}, indent=None)
    files["summary.json"] = json_text(summarize_records(rows))
    spec_dict = {k: v for k, v in spec.__dict__.items()}
    prov = collect_provenance(
        {"experiment": spec.name, "spec": spec_dict, "mode": mode, "num_threads": num_threads},
        device=device, argv=list(argv),
        extra={"status": status, "runs_done": len(rows), "runs_total": len(spec.jobs()),
               "wall_time_s": time.time() - start,
               "runs_wall_time_s": float(sum(r.get("wall_time_s") or 0.0 for r in rows)),
               "run_commits": _run_commits(sources), "experiment": spec.name, "mode": mode,
               # Runs that an earlier invocation produced and this one merged in: from the work
               # directory, or (``runs_kept_from_results``) from the result files already in ``out``,
               # e.g. committed results of runs whose work directory is on another machine.
               "runs_from_earlier_invocations": sorted(set(earlier) | set(kept)),
               "runs_kept_from_results": sorted(kept), "work_dir": local_path(work_dir),
               "invocations": _invocations(sources), "run_sources": _local_commands(sources),
               "seeds": list(spec.seeds), "configs": list(spec.configs), "notes": spec.notes},
    )
    files["provenance.json"] = json_text(prov)
    atomic_write_files(out, files)


def finished_record(run_dir: Path, cfg) -> Optional[Dict[str, Any]]:
    """The record of a run finished in ``run_dir`` with the settings of ``cfg``: by its hash, or
    (a record hashed by an earlier version of this module) by the run's own ``config.yaml``."""
    rec_path = run_dir / "record.json"
    if not rec_path.exists():
        return None
    rec = read_record(rec_path)
    if rec.get("config_hash") in (settings_hash(cfg), legacy_config_hash(cfg)):
        return rec
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        try:
            ran = load_config(yaml.safe_load(cfg_path.read_text()))
        except (ConfigError, yaml.YAMLError):
            return None
        if effective_settings(ran) == effective_settings(cfg):
            return rec
    return None


def read_record(path: Path) -> Dict[str, Any]:
    """A run's ``record.json`` (what :func:`finished_record` serves); a damaged one is a one-line
    :class:`ConfigError` naming it and the fix."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is damaged ({getattr(exc, 'msg', type(exc).__name__)}): delete it and rerun the "
                          "same command, which then trains that run again") from None
    if not isinstance(rec, dict) or "row" not in rec:
        raise ConfigError(f"{path} is not a run record: delete it and rerun the same command, which then trains "
                          "that run again")
    return rec


def run_lock(path: Path) -> DirLock:
    """An exclusive, non-blocking lock on one run's directory (:class:`~.results.DirLock`, ``"try"``):
    ``as`` gives ``True`` when this process holds it, ``False`` when another is training that run."""
    return DirLock(path, "try")


def write_merged(out: Path, grid: ExperimentSpec, grid_keys: Sequence[str], records: Dict[str, Dict[str, Any]],
                  others: Sequence[Dict[str, Any]], status: Optional[str], start: float, mode: str,
                  used_device: Optional[str], argv: Sequence[str], num_threads, work_dir: Path,
                  device: str, may_drop: Optional[Dict[str, str]] = None) -> Tuple[Dict[str, Dict[str, Any]], str]:
    """Write this invocation's runs merged with every other finished run of the grid.

    The other runs are re-read from ``work_dir`` under an exclusive lock on ``out``, so slices
    running at the same time cannot overwrite each other's runs: whichever writes last read the
    work directory last, after every other slice had saved its finished runs' records.
    ``status`` ``None`` means the invocation is over: ``completed`` or ``partial`` by the grid.

    Under the same lock the files are checked as they are now: runs they hold with other settings
    are dropped only if ``may_drop`` names them as they were when the invocation started
    (``--replace``, :func:`check_results`); any other -- written since by a command with other
    settings -- stops this one (:class:`ConfigError`), and so does a run the files hold whose
    curves (or per-step files) are missing and that no work directory here can rebuild.  The write
    itself is one change of all the files (:func:`~guiding_nc.training.provenance.atomic_write_files`),
    which first finishes or undoes one a crash interrupted.
    """
    out.mkdir(parents=True, exist_ok=True)
    with DirLock(out, "exclusive"):
        recover_files(out)
        earlier = _finished_records(grid, others, work_dir, device, num_threads)
        # Runs already in the result files whose work directory is not here (committed results
        # made on another machine or in another clone) are kept, never overwritten by absence.
        in_results, result_sources, refused, incomplete = _read(out, grid, mode, work_dir, device, num_threads,
                                                                replace=may_drop is not None, lock=False)
        foreign = sorted(k for k, fp in refused.items() if (may_drop or {}).get(k) != fp)
        if foreign:
            raise ConfigError(f"{out} now holds {len(foreign)} run(s) made with other settings than this command's, "
                              f"written by another command since this one started ({_some(foreign, 3)}): this "
                              f"command's finished runs stay in its work directory {work_dir}; write them to another "
                              "directory with --out DIR")
        _warn_refused(out, grid, list(refused))
        kept = {k: v for k, v in in_results.items() if k not in records and k not in earlier}
        lost = {k: incomplete[k] for k in kept if k in incomplete}
        if lost:
            raise _incomplete_error(out, work_dir, lost)
        merged = _in_grid_order(grid_keys, records, earlier, kept)
        jobs = {run_key_of(j): j for j in grid.jobs()}
        sources = {k: (result_sources[k] if k in kept else _run_meta(
            work_dir, k, settings_hash(run_config(grid, jobs[k], work_dir / k, device, num_threads, progress=False))))
            for k in merged}
        if status is None:
            status = "completed" if len(merged) == len(grid_keys) else "partial"
        _write_outputs(out, grid, merged, status, start, mode, used_device, argv, num_threads, work_dir, sources,
                       earlier, kept)
    return merged, status


def check_results(out: Path, grid: ExperimentSpec, mode: str, work_dir: Path, device: str, num_threads, *,
                  replace: bool = False) -> Tuple[Dict[str, Dict[str, Any]], Optional[Dict[str, str]]]:
    """What the result files in ``out`` hold before an invocation trains anything, read under the
    directory's lock: ``(records of the runs they hold with the grid's settings, the runs they hold
    with other settings that this invocation may drop)``; the latter is ``None`` without
    ``replace`` (then no run may be dropped) and maps each run to its row's fingerprint, so a row
    written later by another command is never taken for it.

    Raises :class:`ConfigError` (one line, naming the fix) where the files hold runs with other
    settings and ``replace`` is false, or a file is missing that the runs they hold need and that
    no finished run in ``work_dir`` can rebuild (``curves.csv``, say; ``summary.json`` is always
    rebuilt from ``runs.csv``).
    """
    out = Path(out)
    if not out.is_dir():
        return {}, ({} if replace else None)
    with DirLock(out, "exclusive"):
        records, _, refused, incomplete = _read(out, grid, mode, work_dir, device, num_threads, replace=replace,
                                                lock=False)
    if refused and not replace:
        keys = list(refused)
        raise ConfigError(f"{out} holds {len(keys)} run(s) made with other settings than this command's "
                          f"({_some(keys, 3)}): write to another directory with --out DIR, or pass --replace to drop "
                          "them from the files")
    jobs = {run_key_of(j): j for j in grid.jobs()}
    lost = {k: files for k, files in incomplete.items()
            if finished_record(work_dir / k, run_config(grid, jobs[k], work_dir / k, device, num_threads,
                                                        progress=False)) is None}
    if lost:
        raise _incomplete_error(out, work_dir, lost)
    return records, (dict(refused) if replace else None)


def _some(keys: Sequence[str], n: int) -> str:
    return ", ".join(list(keys)[:n]) + (" ..." if len(keys) > n else "")


def _incomplete_error(out: Path, work_dir: Path, lost: Dict[str, List[str]]) -> ConfigError:
    """The one-line refusal for runs the result files hold without a file they need."""
    files = sorted({f for fs in lost.values() for f in fs})
    shown = str(out / files[0])
    return ConfigError(f"{shown} is missing, and {len(lost)} run(s) that runs.csv holds are not finished in the work "
                       f"directory {work_dir} to rebuild it ({_some(sorted(lost), 3)}): restore it (e.g. git checkout "
                       f"-- {shown}), or rerun with the --work-dir that made them")


def _warn_refused(out: Path, grid: ExperimentSpec, refused: List[str]) -> None:
    if refused:
        import warnings

        warnings.warn(f"{out} holds {len(refused)} run(s) not made with the settings of experiment "
                      f"{grid.name!r} as it is now; they are left out of the rewritten files: "
                      f"{_some(refused, 6)}", stacklevel=4)


def _results_records(out: Path, grid: ExperimentSpec, mode: str, work_dir: Path, device: str,
                     num_threads) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Dict[str, Any]]]:
    """:func:`read_results` with a warning naming the runs it leaves out."""
    records, metas, refused = read_results(out, grid, mode, work_dir, device, num_threads)
    _warn_refused(out, grid, refused)
    return records, metas


def _fingerprint(row: Dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_results(out: Path, grid: ExperimentSpec, mode: str, work_dir: Path, device: str,
                  num_threads) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Dict[str, Any]], List[str]]:
    """The finished runs of ``grid`` held by the result files in ``out``, as records, where each
    came from, and the runs they hold that fail the check below.

    A run is taken only if it was made with the settings the grid asks for now: its settings hash
    (``run_sources`` in ``provenance.json``; it leaves out where the run was executed, see
    :data:`~guiding_nc.training.provenance.PLACE_KEYS`) must match.  Files written before hashes
    were recorded have none; their runs are taken when the whole experiment spec and mode recorded
    in the file equal the present ones, and keep ``settings_hash: null``.  Runs that fail the check
    are left out (the files' history keeps them).  A missing ``provenance.json`` (or ``runs.csv``
    where the provenance counts runs) is a :class:`ConfigError` naming it.
    """
    records, metas, refused, _ = _read(out, grid, mode, work_dir, device, num_threads)
    return records, metas, list(refused)


def _read(out: Path, grid: ExperimentSpec, mode: str, work_dir: Path, device: str, num_threads, *,
          replace: bool = False, lock: bool = True):
    """:func:`read_results`, with the refused runs' row fingerprints and, per run, the files it
    needs that are missing: ``(records, metas, {key: fingerprint}, {key: [file, ...]})``.  With
    ``replace`` a missing ``provenance.json`` refuses every run instead of raising."""
    out = Path(out)
    if not out.is_dir():
        return {}, {}, {}, {}
    # summary.json is not read: it is rebuilt from runs.csv at every write (missing or damaged).
    old = read_result_files(out, lock=lock, names=[n for n in RESULT_FILES if n != "summary.json"])
    runs, prov = old["runs"], old["provenance"]
    shown = str(out)
    if runs is None:
        if prov is not None and prov.get("runs_done") and not replace:
            raise ConfigError(f"{shown}/runs.csv is missing while {shown}/provenance.json records {prov['runs_done']} "
                              f"run(s): restore it (e.g. git checkout -- {shown}/runs.csv), or pass --replace to start "
                              "the files afresh")
        return {}, {}, {}, {}
    if prov is None:
        if runs and not replace:
            raise ConfigError(f"{shown}/provenance.json is missing, so the {len(runs)} run(s) in runs.csv cannot be "
                              f"checked against this command's settings: restore it (e.g. git checkout -- "
                              f"{shown}/provenance.json), or pass --replace to drop them")
        return {}, {}, {run_key_of(r): _fingerprint(r) for r in runs}, {}
    needs = [name for name, key, wanted in (("curves.csv", "curves", True),
                                            ("step_accuracy.json", "step_accuracy", grid.record_step_accuracy),
                                            ("step_loss.json", "step_loss", grid.record_step_losses),
                                            ("margins.json", "margins", grid.save_margins))
             if wanted and old[key] is None]
    sources = prov.get("run_sources") or {}
    legacy: Dict[str, Dict[str, Any]] = {}
    for inv in prov.get("invocations") or []:
        for k in inv.get("runs", []):
            legacy[k] = {"command": inv.get("command", "?"), "commit": inv.get("commit", "unknown"),
                         "device": inv.get("device", "?"), "num_threads": inv.get("num_threads"),
                         "first_date": inv.get("first_date"), "last_date": inv.get("last_date"), "settings_hash": None}
    spec_now = json.loads(json.dumps(to_jsonable(dict(grid.__dict__))))
    spec_then = (prov.get("config") or {}).get("spec")
    same_spec = _same_spec(spec_then, spec_now) and prov.get("mode") == mode
    jobs = {run_key_of(j): j for j in grid.jobs()}
    curves: Dict[str, List[Dict[str, Any]]] = {}
    for c in old["curves"] or []:
        curves.setdefault(run_key_of(c), []).append({k: v for k, v in c.items()
                                               if k not in ("config", "variant", "method", "seed") and v is not None})
    records: Dict[str, Dict[str, Any]] = {}
    metas: Dict[str, Dict[str, Any]] = {}
    refused: Dict[str, str] = {}
    incomplete: Dict[str, List[str]] = {}
    for row in runs:
        k = run_key_of(row)
        if k not in jobs:
            refused[k] = _fingerprint(row)
            continue
        meta = dict(sources.get(k) or legacy.get(k) or _file_level_meta(prov))
        if meta.get("settings_hash"):
            ok = meta["settings_hash"] == settings_hash(run_config(grid, jobs[k], work_dir / k, device, num_threads,
                                                                     progress=False))
        else:
            # No hash recorded: the same settings under the spec that made it as under today's
            # (the same spec, or one that spells the same run another way), and a method whose
            # definition has not changed since.
            from ..core.methods import HEAD_REVISIONS

            ok = HEAD_REVISIONS.get(str(row.get("method")), 1) == 1 and (
                same_spec or _same_run_then(spec_then, grid, jobs[k], work_dir / k, device, num_threads))
        if not ok:
            refused[k] = _fingerprint(row)
            continue
        records[k] = {"row": dict(row), "curves": curves.get(k, []),
                      "step_accuracy": (old.get("step_accuracy") or {}).get(k),
                      "step_loss": (old.get("step_loss") or {}).get(k),
                      "margins": (old.get("margins") or {}).get(k)}
        metas[k] = meta
        if needs:
            incomplete[k] = list(needs)
    return records, metas, refused, incomplete


def stale_runs(out: Path) -> List[str]:
    """The runs held by the result files in ``out`` (a ``data/results/<name>`` folder written by
    :func:`run_experiment`) that the experiment as defined now would not keep: made with other
    settings than its config asks for today (a changed hyper-parameter or a revised method), or no
    longer in its grid.  An empty list: every committed run is what a rerun would compute.
    """
    out = Path(out)
    prov_path = out / "provenance.json"
    if not prov_path.is_file():
        raise ConfigError(f"{out} holds no provenance.json: not a folder of experiment results")
    prov = json.loads(prov_path.read_text())
    if not prov.get("experiment"):
        raise ConfigError(f"{prov_path} names no experiment: not written by run_experiment")
    spec = load_experiment(prov["experiment"])
    mode = prov.get("mode", "full")
    grid = spec.quick_spec() if mode == "quick" else spec
    device = str(prov.get("device") or "cpu")
    _, _, refused = read_results(out, grid, mode, out / "work", device, prov.get("num_threads"))
    return refused


def _file_level_meta(prov: Dict[str, Any]) -> Dict[str, Any]:
    """Where a run came from when the files that hold it predate per-run provenance: what the
    files say of all their runs together (their command, the commits that made their runs, their
    device and date), so a rewrite keeps it rather than writing "unknown"."""
    git = prov.get("git") or {}
    commits = prov.get("run_commits") or ([(git.get("commit") or "unknown") + ("-dirty" if git.get("dirty") else "")]
                                          if git else ["unknown"])
    return {"command": prov.get("command", "?"), "commit": " or ".join(str(c) for c in commits),
            "device": str(prov.get("device_name") or prov.get("device") or "?"),
            "num_threads": prov.get("num_threads"), "first_date": None, "last_date": prov.get("date"),
            "settings_hash": None}


def _same_run_then(then: Optional[Dict[str, Any]], grid: ExperimentSpec, job: Dict[str, Any], run_dir: Path,
                   device: str, num_threads) -> bool:
    """The run ``job`` of ``grid`` has the same effective settings under the spec recorded with
    its results (``then``, a dict) as under ``grid``: e.g. a spec that now states a value its
    config already gave."""
    import dataclasses

    if not isinstance(then, dict):
        return False
    names = {f.name for f in dataclasses.fields(ExperimentSpec)}
    try:
        old = ExperimentSpec(**{k: v for k, v in then.items() if k in names})
        old_job = next((j for j in old.jobs() if run_key_of(j) == run_key_of(job)), None)
        if old_job is None:
            return False
        before = effective_settings(run_config(old, old_job, run_dir, device, num_threads, progress=False))
    except (ConfigError, TypeError, ValueError, KeyError):
        return False
    return before == effective_settings(run_config(grid, job, run_dir, device, num_threads, progress=False))


def _same_spec(then: Optional[Dict[str, Any]], now: Dict[str, Any]) -> bool:
    """The spec recorded in old result files equals the present one; a key the old files do not
    have (added to :class:`ExperimentSpec` later) counts as equal when it has its default now."""
    if not isinstance(then, dict):
        return False
    defaults = json.loads(json.dumps(to_jsonable(ExperimentSpec(name=str(now.get("name"))).__dict__)))
    return all(then.get(k, defaults.get(k)) == now.get(k, defaults.get(k)) for k in set(then) | set(now))


def _finished_records(spec: ExperimentSpec, jobs: Sequence[Dict[str, Any]], work_dir: Path, device: str,
                      num_threads) -> Dict[str, Dict[str, Any]]:
    """Records of ``jobs`` already finished in ``work_dir`` with exactly their settings."""
    found: Dict[str, Dict[str, Any]] = {}
    for job in jobs:
        rec_path = work_dir / run_key_of(job) / "record.json"
        if not rec_path.exists():
            continue
        cfg = run_config(spec, job, work_dir / run_key_of(job), device, num_threads, progress=False)
        rec = finished_record(work_dir / run_key_of(job), cfg)
        if rec is not None:
            found[run_key_of(job)] = rec
    return found


def _in_grid_order(keys: Sequence[str], *parts: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    have = {k: v for part in parts for k, v in part.items()}
    return {k: have[k] for k in keys if k in have}


def legacy_config_hash(cfg, ignore: Sequence[str] = ("progress", "verbose", "resume", "device", "num_threads")) -> str:
    """The hash work-directory records carried before :func:`settings_hash` (the whole config but
    how it ran, its location included): a record holding it still counts as finished."""
    import hashlib

    from ..core.methods import HEAD_REVISIONS

    d = cfg.to_dict()
    for k in ignore:
        d.pop(k, None)
    # A method whose definition changed (its revision) computes something else with the same
    # settings; revision 1 adds nothing, so hashes recorded before revisions existed still hold.
    if HEAD_REVISIONS.get(cfg.method, 1) != 1:
        d["head_revision"] = HEAD_REVISIONS[cfg.method]
    return hashlib.sha256(json.dumps(to_jsonable(d), sort_keys=True).encode()).hexdigest()[:16]


def effective_settings(cfg) -> Dict[str, Any]:
    """The settings that determine a run's result, spelled one way
    (:func:`guiding_nc.training.provenance.result_settings`, the one rule that a resumed checkpoint
    is held to too): without where and how it ran, with ``model_kwargs`` entries that equal the
    model's defaults left out, with the protocol as the values of the options that change this run,
    and with the revision of a method whose definition changed."""
    return result_settings(cfg)


def settings_hash(cfg) -> str:
    """Hash of :func:`effective_settings`: what the result files record for every run."""
    import hashlib

    return hashlib.sha256(json.dumps(effective_settings(cfg), sort_keys=True).encode()).hexdigest()[:16]
