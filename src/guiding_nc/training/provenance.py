"""Run records: provenance (what ran, where, from which code) and atomic file writes.

``provenance.json`` of a run directory holds the command line, the full config, the seed, the
git commit of the source tree (and whether it had uncommitted changes), the date, the device,
the Python/torch/numpy versions and, once the run ends, its wall time and final status.

All writers here are *atomic*: they write a temporary file in the destination directory and
``os.replace`` it over the target, so a crash mid-write never leaves a truncated file (and
never destroys the previous version).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "git_info",
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


def atomic_write(path: PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` on a temporary file next to ``path``, fsync it, then ``os.replace``.

    If ``writer`` raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        # mkstemp creates the file 0600 whatever the umask; give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
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


def atomic_write_json(path: PathLike, data: Any, *, indent: Optional[int] = 2) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(data), indent=indent, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temporary file in the same directory, then ``os.replace`` (atomic)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


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
    if not os.path.isabs(text):
        return text
    return os.path.relpath(text, project_root())


def _local_arg(arg: str) -> str:
    """A command-line word with any absolute path in it (``/x``, ``key=/x``, ``--out=/x``) made local."""
    if "=" in arg and not arg.startswith("/"):
        key, value = arg.split("=", 1)
        return f"{key}={local_path(value)}" if os.path.isabs(value) else arg
    return local_path(arg) if os.path.isabs(arg) else arg


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


def write_provenance(path: PathLike, info: Dict[str, Any]) -> Path:
    return atomic_write_json(path, info)
