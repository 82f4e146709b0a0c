"""Run records: provenance (what ran, where, from which code) and atomic file writes.

``provenance.json`` of a run directory holds the command line, the full config, the seed, the
git commit of the source tree (and whether it had uncommitted changes), the date, the device,
the Python/torch/numpy versions and, once the run ends, its wall time and final status.

All writers here are *atomic*: they write a temporary file in the destination directory and
``os.replace`` it over the target, so a crash mid-write never leaves a truncated file (and
never destroys the previous version); a symbolic link planted at the destination is replaced, never
followed.  :func:`atomic_write_files` writes several files of one directory as one change (a
journal names the new versions before any of them replaces an old one), and :func:`committed_file`
reads such a directory as its last complete write left it.

:func:`result_settings` says which settings determine what a run computes: the one rule that the
result files' settings hash and a resumed checkpoint are both held to.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "atomic_write_files",
    "recover_files",
    "committed_file",
    "JOURNAL_NAME",
    "json_text",
    "PLACE_KEYS",
    "result_settings",
    "git_info",
    "commit_label",
    "device_name",
    "collect_provenance",
    "write_provenance",
    "to_jsonable",
]

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _named(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path`` (the file the caller meant to write, not a temporary one), so the
    one-line error says which file could not be written."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


def atomic_write(path: PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` on a temporary file next to ``path``, fsync it, then ``os.replace``.

    If ``writer`` raises, the temporary file is removed and ``path`` is untouched.  A symbolic
    link at ``path`` is replaced by the file, never followed.  An ``OSError`` (a full disk, say)
    names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    except OSError as exc:
        raise _named(exc, path) from None
    os.close(fd)
    try:
        # mkstemp creates the file 0600 whatever the umask; give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise _named(exc, path) from None
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, _w)


def to_jsonable(obj: Any) -> Any:
    """Convert tensors, numpy scalars/arrays, paths, dtypes and tuples to JSON-friendly values."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None if obj != obj else (1e308 if obj > 0 else -1e308)
    if isinstance(obj, (Path, torch.dtype, torch.device)):
        return str(obj)
    return obj


def json_text(data: Any, *, indent: Optional[int] = 2) -> str:
    """``data`` as the JSON text every JSON file of the package holds (:func:`to_jsonable` first)."""
    return json.dumps(to_jsonable(data), indent=indent, sort_keys=False) + "\n"


def atomic_write_json(path: PathLike, data: Any, *, indent: Optional[int] = 2) -> Path:
    return atomic_write_text(path, json_text(data, indent=indent))


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temporary file in the same directory, then ``os.replace`` (atomic)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


# ------------------------------------------------------------------ several files as one change
#: The journal of a write of several files (:func:`atomic_write_files`): while it exists, the
#: directory's current state is the one it names.
JOURNAL_NAME = ".journal.json"
_JOURNAL_FORMAT = "guiding_nc.journal/1"


def _fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable (where the platform can)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> Optional[str]:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except (FileNotFoundError, IsADirectoryError):
        return None


def _journal(directory: Path) -> Optional[List[Dict[str, str]]]:
    """The entries of the journal in ``directory`` (``None`` when there is none)."""
    from .config import ConfigError

    path = directory / JOURNAL_NAME
    if not path.is_file() or path.is_symlink():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["files"] if data.get("format") == _JOURNAL_FORMAT else None
        ok = isinstance(entries, list) and all(
            isinstance(e, dict) and {"name", "staged", "sha256"} <= set(e) and "/" not in e["name"] + e["staged"]
            for e in entries)
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        ok = False
    if not ok:
        raise ConfigError(f"{path} is damaged, so the last write of the files in {directory} cannot be completed: "
                          f"restore the folder (e.g. git checkout -- {directory}) and delete {JOURNAL_NAME}")
    return entries


def _is_journal_of(directory: Path, entries: Sequence[Dict[str, str]]) -> bool:
    try:
        return bool(entries) and json.loads((directory / JOURNAL_NAME).read_text(encoding="utf-8"))["files"] == entries
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _apply_journal(directory: Path, entries: Sequence[Dict[str, str]]) -> None:
    for e in entries:
        staged = directory / e["staged"]
        if os.path.lexists(staged):
            os.replace(staged, directory / e["name"])
    _fsync_dir(directory)
    os.unlink(directory / JOURNAL_NAME)
    _fsync_dir(directory)


def recover_files(directory: PathLike) -> None:
    """Finish or undo a write of :func:`atomic_write_files` that a crash interrupted: with a
    journal, move the new versions it names into place (its commit had happened); without one,
    remove the temporary files of the write that never committed.  The caller holds the
    directory's exclusive lock.  A state that matches neither version is a :class:`ConfigError`
    naming the file and how to restore it."""
    from .config import ConfigError

    directory = Path(directory)
    if not directory.is_dir():
        return
    entries = _journal(directory)
    if entries is not None:
        for e in entries:
            staged, final = directory / e["staged"], directory / e["name"]
            have = _sha256(staged) if os.path.lexists(staged) else _sha256(final)
            if have != e["sha256"]:
                raise ConfigError(f"{final} is neither the version the interrupted write of {directory} was writing "
                                  f"nor the one before it: restore the folder (e.g. git checkout -- "
                                  f"{directory}), delete {JOURNAL_NAME} and rerun the command")
        _apply_journal(directory, entries)
    for leftover in directory.glob(".*.tmp"):
        if leftover.is_file() or leftover.is_symlink():
            leftover.unlink()


def atomic_write_files(directory: PathLike, files: Mapping[str, Union[str, bytes]]) -> None:
    """Write the files ``{name: content}`` of ``directory`` as one change: after a crash at any
    point, the directory reads (:func:`committed_file`) and, once :func:`recover_files` ran, holds
    either every file as it was or every file as written here, never a mix.

    Each new version is first written to a temporary file beside its target; a journal naming them
    and their SHA-256 is then written atomically (the commit), the temporary files replace the
    targets, and the journal is removed.  The caller holds the directory's exclusive lock.  Names
    are plain file names.  An ``OSError`` (a full disk, say) leaves the old files and names the one
    that could not be written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recover_files(directory)
    txn = os.urandom(6).hex()
    entries: List[Dict[str, str]] = []
    committed = False
    name = JOURNAL_NAME
    try:
        for name, content in files.items():
            if not name or "/" in name or os.sep in name or name.startswith(".") or name == JOURNAL_NAME:
                raise ValueError(f"not a plain file name: {name!r}")
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            staged = directory / f".{name}.{txn}.tmp"

            def _w(tmp: str, data: bytes = data) -> None:
                with open(tmp, "wb") as fh:
                    fh.write(data)

            atomic_write(staged, _w)
            entries.append({"name": name, "staged": staged.name, "sha256": hashlib.sha256(data).hexdigest()})
        name = JOURNAL_NAME
        _fsync_dir(directory)
        atomic_write_text(directory / JOURNAL_NAME, json.dumps({"format": _JOURNAL_FORMAT, "files": entries}) + "\n")
        committed = True
    except BaseException as exc:
        # An interrupt can land after the journal's rename, before `committed` is set: the journal
        # on disk is then the commit, and its staged files must stay for recover_files.
        if not committed and not _is_journal_of(directory, entries):
            for e in entries:
                try:
                    os.unlink(directory / e["staged"])
                except OSError:
                    pass
        if isinstance(exc, OSError):
            raise _named(exc, directory / name) from None
        raise
    _fsync_dir(directory)
    _apply_journal(directory, entries)


def committed_file(directory: PathLike, name: str) -> Path:
    """Where the current version of ``directory/name`` is: the new version a committed but
    unfinished :func:`atomic_write_files` left beside it (a crash between its commit and its
    renames), else ``directory/name`` itself.  Reads only."""
    directory = Path(directory)
    try:
        entries = _journal(directory)
    except ValueError:
        entries = None
    for e in entries or []:
        staged = directory / e["staged"]
        if e["name"] == name and os.path.lexists(staged) and _sha256(staged) == e["sha256"]:
            return staged
    return directory / name


# What can change what a run computes: the package's source and its configs (tracked or not) and the
# dependency pins.  Nothing else makes a tree "dirty": results, the book's pages, notebooks' outputs.
_CODE_DIRS = ("src/", "configs/")
_CODE_FILES = ("pyproject.toml", "constraints.txt")


def git_info(path: Optional[PathLike] = None) -> Dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None, "branch": name or None}`` of the repo at ``path``.

    ``commit`` is ``None`` outside a git checkout or before the first commit.  ``dirty`` is True
    when a file under ``src/`` or ``configs/`` (tracked or not, not ignored), ``pyproject.toml`` or
    ``constraints.txt`` differs from the commit: what could make the code that ran differ from
    ``commit``.  Nothing else counts -- results, the book's pages, notebooks' outputs: nothing that
    trains reads them, and a grid writing its committed result files after every run must not
    mark its own later runs dirty.
    """
    cwd = str(path) if path is not None else str(Path(__file__).resolve().parent)

    def run(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        # Only trailing whitespace goes: a porcelain line starts with a meaningful blank (" M path").
        return out.stdout.rstrip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    # Porcelain paths are relative to the repository root, wherever git runs from.
    status = run("status", "--porcelain", "--untracked-files=all")
    branch = run("rev-parse", "--abbrev-ref", "HEAD")
    dirty = None
    if status is not None:
        lines = [ln for ln in status.splitlines() if ln.strip()]

        def code(ln: str) -> bool:
            path = ln[3:].split(" -> ")[-1].strip('"')
            return path.startswith(_CODE_DIRS) or path in _CODE_FILES

        dirty = any(code(ln) for ln in lines)
    return {"commit": commit, "dirty": dirty, "branch": branch}


def device_name(device: Optional[Union[str, torch.device]] = None) -> str:
    """A human-readable device name: the GPU model on CUDA, the CPU model otherwise."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu ({name})" if name else "cpu"


def local_path(path: PathLike) -> str:
    """``path`` as committed files should show it: relative to the project root (the checkout, or
    the current directory for an installed package), so no file names the machine that wrote it."""
    from .config import project_root

    text = str(path)
    rel = text if not os.path.isabs(text) else os.path.relpath(text, project_root())
    if rel == ".." or rel.startswith("../"):
        # Outside the project (a sibling checkout, the temporary directory): its place says nothing
        # a reader can use and names the machine, so only its last component is kept.
        return f"<outside the project>/{os.path.basename(rel.rstrip('/')) or '..'}"
    return rel


def _local_arg(arg: str) -> str:
    """A command-line word with any path in it (``/x``, ``../x``, ``key=/x``, ``--out=/x``) made local."""
    if "=" in arg and not arg.startswith(("/", "..")):
        key, value = arg.split("=", 1)
        return f"{key}={local_path(value)}" if os.path.isabs(value) or value.startswith("..") else arg
    return local_path(arg) if os.path.isabs(arg) or arg.startswith("..") else arg


def local_command(command: str) -> str:
    """A recorded command line with every absolute path in it made local (see :func:`local_path`)."""
    return " ".join(_local_arg(word) for word in command.split(" "))


def collect_provenance(config: Dict[str, Any], *, seed: Optional[int] = None,
                       device: Optional[Union[str, torch.device]] = None,
                       argv: Optional[Sequence[str]] = None, world_size: int = 1,
                       extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Everything needed to say what produced a run directory."""
    words = [_local_arg(str(a)) for a in (argv if argv is not None else sys.argv)]
    info: Dict[str, Any] = {
        "command": " ".join(words),
        "argv": words,
        "cwd": local_path(os.getcwd()),
        "config": config,
        "seed": seed,
        "git": git_info(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device) if device is not None else None,
        "device_name": device_name(device),
        "world_size": world_size,
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "num_threads": torch.get_num_threads(),
        "status": "running",
        "wall_time_s": None,
    }
    if extra:
        info.update(extra)
    return info


def commit_label(prov: Dict[str, Any]) -> str:
    """The commit a provenance record names, with ``-dirty`` where the tree had code changes
    (records written before :func:`collect_provenance` existed say ``git_commit``)."""
    git = prov.get("git") or {}
    if git.get("commit"):
        return git["commit"] + ("-dirty" if git.get("dirty") else "")
    return str(prov.get("git_commit") or "unknown")


def write_provenance(path: PathLike, info: Dict[str, Any]) -> Path:
    return atomic_write_json(path, info)


# ------------------------------------------------------------------ what determines a result
#: Where and how a run was executed, not what it computes: left out of :func:`result_settings`, so a
#: run made in another clone, work directory or data folder, on another device or with another
#: number of threads counts as the same run.
PLACE_KEYS = ("progress", "verbose", "resume", "device", "num_threads", "run_dir", "output_dir", "data_root",
              "download", "overwrite", "num_workers", "pin_memory", "keep_checkpoints")


def result_settings(cfg) -> Dict[str, Any]:
    """The settings that determine a run's result, spelled one way: without where and how it ran
    (:data:`PLACE_KEYS`), with ``model_kwargs`` entries that equal the model's defaults left out,
    and with the revision of a method whose definition changed (``HEAD_REVISIONS``).

    The protocol (:mod:`guiding_nc.training.protocol`) enters as the values of the options that
    change this run (:func:`~guiding_nc.training.protocol.relevant`), not as the protocol's name: the
    run's sampler as ``stratified``, the final activation as the model's ``final_activation`` entry,
    and any other option only where it departs from the one-switch protocol, which every run made
    before the options existed used.  So a run's hash names what it computed, and those runs keep
    theirs.  The result files' settings hash
    (:func:`guiding_nc.experiments.store.settings_hash`) is this, hashed; a checkpoint resumes only
    under the same (:meth:`guiding_nc.training.run_files.RunFiles.load_checkpoint`).
    """
    from ..core.methods import HEAD_REVISIONS
    from .models import model_defaults
    from .protocol import OPTION_KEYS, protocol_values, relevant

    d = cfg.to_dict()
    for k in PLACE_KEYS:
        d.pop(k, None)
    defaults = model_defaults(cfg.model)
    values = cfg.protocol_choices()
    has_final = "final_activation" in defaults
    keep = relevant(values, cfg.method, model_has_final_activation=has_final, agd=str(cfg.optimizer).lower() == "agd")
    for k in ("protocol",) + OPTION_KEYS:
        d.pop(k, None)
    d["stratified"] = cfg.stratified_batches
    if has_final:
        d["model_kwargs"] = {**(d.get("model_kwargs") or {}), "final_activation": bool(values["final_activation"])}
    before = protocol_values("one_switch")
    for k, v in keep.items():
        if k not in ("final_activation",) and not k.endswith("_sampler") and v != before[k]:
            d[k] = v
    d["model_kwargs"] = {k: v for k, v in (d.get("model_kwargs") or {}).items()
                         if not (k in defaults and defaults[k] == v)}
    if HEAD_REVISIONS.get(cfg.method, 1) != 1:
        d["head_revision"] = HEAD_REVISIONS[cfg.method]
    return json.loads(json.dumps(to_jsonable(d), sort_keys=True))
