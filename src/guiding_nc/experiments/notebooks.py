"""Run the book's experiment pages as notebooks, with papermill: the way each chapter is reproduced.

Every experiment page (``book/07_ufm10.md`` ... ``book/14_forward_gradients.md``) is a MyST
Markdown notebook whose first code cell, tagged ``parameters``, declares its parameters
(``QUICK``, ``DEVICE``, ``SEEDS``, ``OUT``, ...).  :func:`run_page` turns a page into a notebook
with jupytext, checks the parameters against the ones it declares (papermill's own inspection),
executes it with papermill (its progress bar included) and writes the executed notebook with the
machine's local paths replaced by relative ones.

Usage::

    python -m guiding_nc.notebooks                       # every page, quick mode (seconds to minutes each)
    python -m guiding_nc.notebooks --full                # full mode: each page's committed experiment, its
                                                         # notebook written beside its results
    python -m guiding_nc.notebooks --full --only ufm10 -p DEVICE cuda
    python -m guiding_nc.notebooks --only real_offline -p EXPERIMENT real_images -p 'CONFIGS=["cifar10_resnet18"]'

In quick mode the executed notebooks go to ``--out-dir`` (default ``runs/notebooks``); in full mode
to ``data/results/<experiment>/notebook.ipynb``.  ``make reproduce`` runs this module; its last
line says how many pages ran, in which mode and how long, and where each executed notebook is.
The kernel talks to papermill over local IPC sockets (:func:`kernel_manager_class`), not TCP.
A page writes nothing outside its ``OUT`` and a temporary directory it removes when it ends
(:func:`workspace`).
"""
from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..core.checks import THREADS, ArgumentError, Check, Device, Flag, Integer, ListOf, Maybe, Name, PathText, Real
from ..training.config import ConfigError, project_root

__all__ = ["PAGES", "PARAMETERS", "Page", "workspace", "run_page", "page_parameters", "check_parameters", "main"]


@dataclass(frozen=True)
class Page:
    """One experiment page: its file in ``book/`` and the experiment whose results its full mode
    makes (the parameter ``EXPERIMENT`` overrides it where the page has one)."""

    name: str
    file: str
    experiment: str


PAGES: Dict[str, Page] = {p.name: p for p in (
    Page("ufm10", "07_ufm10.md", "ufm10"),
    Page("ufm_scaling", "08_ufm_scaling.md", "ufm_scaling_cpu"),
    Page("real_offline", "09_real_images.md", "real_offline"),
    Page("ablations", "10_ablations.md", "ablations"),
    Page("cost", "11_cost.md", "cost"),
    Page("reduction_mappings", "13_reduction_mappings.md", "reduction_mappings"),
    Page("forward_gradients", "14_forward_gradients.md", "forward_gradients"),
)}

#: What each page parameter accepts (a page's ``parameters`` cell says which it takes; a value is
#: checked here before any page runs). A parameter a page declares must have an entry.
PARAMETERS: Dict[str, Check] = {
    "QUICK": Flag(),
    "EXPERIMENT": Name(),
    "DEVICE": Device(),
    "SEEDS": Maybe(ListOf(Integer(0, 2 ** 32 - 1), unique=True, example="[0, 1]"), "null", "the experiment's"),
    "SEED": Integer(0, 2 ** 32 - 1),
    "CONFIGS": Maybe(ListOf(Name(), unique=True, example='["cifar10_resnet18"]'), "null", "the experiment's"),
    "OUT": Maybe(PathText(), "null", "the committed results"),
    "DATA_ROOT": PathText(),
    "DOWNLOAD": Flag(),
    "THREADS": THREADS,
    "MAX_STEPS": Integer(1),
    "KKT_CAP_GB": Real(0.0, 1e6, low_open=True),
    "LIVE_CONFIGS": Maybe(ListOf(Name(), unique=True, example='["C4_d6"]'), "null", "the mode's"),
    "LIVE_STEPS": Maybe(Integer(1), "null", "the mode's"),
}

_TEMP_DIRS: List[tempfile.TemporaryDirectory] = []


def workspace(out: Optional[str], name: str) -> Path:
    """Where a page writes a live run: ``OUT/<name>`` when the page was given ``OUT``, else a
    temporary directory that is removed when the process (the notebook's kernel) ends."""
    if out:
        path = Path(out) / name
        path.mkdir(parents=True, exist_ok=True)
        return path
    tmp = tempfile.TemporaryDirectory(prefix=f"guiding_nc_{name}_")
    _TEMP_DIRS.append(tmp)
    return Path(tmp.name)


@atexit.register
def _cleanup() -> None:
    for tmp in _TEMP_DIRS:
        tmp.cleanup()


def _book_dir() -> Path:
    return project_root() / "book"


def check_parameters(page: str, parameters: Mapping[str, Any], declared: Mapping[str, Any]) -> None:
    """Refuse, before anything runs, a parameter ``page`` does not declare or a value its entry of
    :data:`PARAMETERS` does not accept (a :class:`ConfigError` naming the parameter)."""
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ConfigError(f"page {page!r} declares no parameter(s) {', '.join(unknown)}; "
                          f"it declares {', '.join(declared)}")
    for name, value in parameters.items():
        check = PARAMETERS.get(name)
        if check is None:
            raise ConfigError(f"page {page!r} declares parameter {name}, which guiding_nc.experiments.notebooks.PARAMETERS "
                              "does not describe: add its type there")
        try:
            check(f"parameter {name}", value)
        except ArgumentError as exc:
            raise ConfigError(f"{exc} (page {page!r}, book/{PAGES[page].file})") from None


_DECLARED: Dict[tuple, Dict[str, Any]] = {}  # (page, file state) -> its parameters


def page_parameters(page: str) -> Dict[str, Any]:
    """The parameters a page declares, ``{name: default source text}`` (papermill's inspection;
    remembered while the page's file is unchanged)."""
    import papermill as pm

    if page in PAGES and (_book_dir() / PAGES[page].file).exists():
        st = (_book_dir() / PAGES[page].file).stat()
        key = (page, st.st_mtime_ns, st.st_size)
        if key in _DECLARED:
            return dict(_DECLARED[key])
    else:
        key = None
    with tempfile.TemporaryDirectory() as tmp:
        nb_path = _as_notebook(page, Path(tmp))
        found = {name: info["default"] for name, info in pm.inspect_notebook(str(nb_path)).items()}
    if key is not None:
        _DECLARED[key] = found
    return dict(found)


def _as_notebook(page: str, where: Path) -> Path:
    import jupytext

    if page not in PAGES:
        raise ConfigError(f"unknown page {page!r}; choose from {', '.join(PAGES)}")
    src = _book_dir() / PAGES[page].file
    if not src.exists():
        raise ConfigError(f"{src} not found: the pages are read from the book of a source checkout")
    path = where / (Path(PAGES[page].file).stem + ".ipynb")
    jupytext.write(jupytext.read(str(src)), str(path))
    return path


def local_replacements() -> List[tuple]:
    """``(local path, what a committed notebook shows instead)``, most specific first: the
    interpreter's packages (a warning names the file that raised it), its environment, the project
    root and the temporary directory, each also as its resolved path."""
    import sysconfig

    pairs = []
    for path, shown in ((sysconfig.get_paths()["purelib"], "<site-packages>"), (sys.prefix, "<venv>"),
                        (str(project_root()), "."), (tempfile.gettempdir(), "<tmp>")):
        for p in dict.fromkeys((path, os.path.realpath(path))):
            if shown == ".":
                pairs.append((p + os.sep, ""))
            pairs.append((p, shown))
    return pairs


def _scrub(obj: Any, replacements: Sequence[tuple]) -> Any:
    """``obj`` with every local path (the project root, the temporary directory) replaced."""
    if isinstance(obj, str):
        for old, new in replacements:
            obj = obj.replace(old, new)
        return obj
    if isinstance(obj, list):
        return [_scrub(x, replacements) for x in obj]
    if isinstance(obj, dict):
        return {k: _scrub(v, replacements) for k, v in obj.items()}
    return obj


def kernel_manager_class():
    """A kernel manager whose kernel talks over IPC sockets, beside its connection file in
    Jupyter's runtime directory, instead of TCP on localhost: the kernel then has no unencrypted
    port to warn about ("Kernel is running over TCP without encryption")."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self):
            return "ipc"

    return IPCKernelManager


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_page(page: str, parameters: Optional[Mapping[str, Any]] = None, *, output: Path,
             progress: bool = True, kernel: str = "python3") -> Path:
    """Execute ``page`` with ``parameters`` and write the executed notebook to ``output``.

    A parameter the page does not declare is a :class:`~guiding_nc.training.config.ConfigError` before
    anything runs.  The notebook runs with the book's directory as its working directory, as the
    book build runs it.  Returns ``output``.
    """
    import papermill as pm

    parameters = dict(parameters or {})
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="guiding_nc_nb_") as tmp:
        src = _as_notebook(page, Path(tmp))
        check_parameters(page, parameters, pm.inspect_notebook(str(src)))
        executed = Path(tmp) / "executed.ipynb"
        try:
            pm.execute_notebook(str(src), str(executed), parameters=parameters, kernel_name=kernel,
                                cwd=str(_book_dir()), progress_bar=progress, log_output=False,
                                kernel_manager_class=kernel_manager_class())
        except pm.PapermillExecutionError:
            if executed.exists():  # the notebook up to the failing cell, error included
                _write_notebook(executed, output)
            raise
        _write_notebook(executed, output)
    return output


def _write_notebook(executed: Path, output: Path) -> None:
    nb = _scrub(json.loads(executed.read_text()), local_replacements())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(nb, indent=1) + "\n")


def _parse_parameter(text: str):
    """``NAME=VALUE`` with ``VALUE`` read as YAML (``5``, ``false``, ``[0, 1]``, ``cuda``)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"parameter {text!r} is not of the form NAME=VALUE")
    name, value = text.split("=", 1)
    name = name.strip()
    if not name.isidentifier():
        raise ConfigError(f"parameter {text!r}: {name!r} is not a parameter name (e.g. -p THREADS=2)")
    try:
        return name, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"parameter {name}: {value!r} is not a valid YAML value ({exc.__class__.__name__})") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..training.command_line import OneLineParser, run_cli

    def _main(args_list) -> int:
        from papermill import PapermillExecutionError

        parser = OneLineParser(prog="python -m guiding_nc.notebooks", description=__doc__.split("\n\n")[0])
        parser.add_argument("--only", default=None, help="comma-separated pages: " + ", ".join(PAGES))
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--quick", action="store_true", help="quick mode (the default)")
        mode.add_argument("--full", action="store_true", help="full mode: notebooks beside the results")
        parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                            help="a page parameter (YAML value), e.g. -p DEVICE=cuda; may repeat")
        parser.add_argument("--out-dir", default="runs/notebooks", help="where quick-mode notebooks go")
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument("--list", action="store_true", help="list the pages and their parameters")
        args = parser.parse_args(args_list)
        pages = list(PAGES) if not args.only else [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = [p for p in pages if p not in PAGES]
        if unknown:
            raise ConfigError(f"unknown page(s) {', '.join(unknown)}; choose from {', '.join(PAGES)}")
        if args.list:
            for p in pages:
                print(f"{p:<20} book/{PAGES[p].file}: " + ", ".join(f"{k}={v}" for k, v in page_parameters(p).items()))
            return 0
        params: Dict[str, Any] = {}
        for t in args.parameter:
            name, value = _parse_parameter(t)
            if name in params:
                raise ConfigError(f"parameter {name} is given twice (-p {name}=...); give it once")
            if name == "QUICK":
                raise ConfigError("QUICK is not a parameter to give: --quick (the default) or --full sets it")
            params[name] = value
        PathText()("--out-dir", args.out_dir)
        if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
            raise ConfigError(f"--out-dir {args.out_dir} is a file, not a directory: name a directory")
        full = bool(args.full)
        # Every parameter against every selected page before the first runs: a typo must not run
        # (and then ignore) pages for minutes.
        declared = {p: page_parameters(p) for p in pages}
        if not args.only:
            anywhere = set().union(*(set(d) for d in declared.values()))
            stray = sorted(set(params) - anywhere)
            if stray:
                raise ConfigError(f"no page declares parameter(s) {', '.join(stray)}; the pages declare "
                                  f"{', '.join(sorted(anywhere))} (see --list)")
        for p in pages:
            given = params if args.only else {k: v for k, v in params.items() if k in declared[p]}
            check_parameters(p, {**given, "QUICK": not full}, declared[p])
        begin, written = time.time(), []
        for p in pages:
            given = {k: v for k, v in params.items() if k in declared[p]}
            given["QUICK"] = not full
            experiment = given.get("EXPERIMENT", PAGES[p].experiment)
            out = (project_root() / "data" / "results" / experiment / "notebook.ipynb" if full
                   else Path(args.out_dir) / f"{p}.ipynb")
            start = time.time()
            print(f"[{p}] book/{PAGES[p].file} {'full' if full else 'quick'} mode, parameters {given}", flush=True)
            try:
                run_page(p, given, output=out, progress=not args.no_progress)
            except PapermillExecutionError as exc:
                error = (str(exc.evalue).strip().splitlines() or [""])[0]
                print(f"reproduce failed: page {p} (book/{PAGES[p].file}), cell [{exc.exec_count}] raised "
                      f"{exc.ename}: {error}; the notebook up to that cell: {_shown(out)}",
                      file=sys.stderr, flush=True)
                return 1
            print(f"[{p}] {time.time() - start:.0f} s -> {_shown(out)}", flush=True)
            written.append(f"{p} -> {_shown(out)}")
        print(f"reproduced {len(written)} page{'s' * (len(written) != 1)} in {'full' if full else 'quick'} "
              f"mode in {time.time() - begin:.0f} s, every cell ran without error; executed "
              f"notebook{'s' * (len(written) != 1)}: {'; '.join(written)}", flush=True)
        return 0

    return run_cli(_main, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
