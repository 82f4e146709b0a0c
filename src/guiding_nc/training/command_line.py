"""What every command line of the package shares: one-line errors and their exit codes.

A user who mistypes gets one line on stderr that names the problem and what is accepted, never a
traceback.  Exit codes: 0 success, 2 a bad command line, configuration, checkpoint or output
directory, 3 training stopped on a non-finite loss, 4 a dataset that is not on disk, 130 stopped
by Ctrl-C (SIGINT; the run's provenance then says ``killed`` and ``resume=true`` continues it).
"""
from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable, NoReturn, Optional, Sequence

__all__ = ["OneLineParser", "run_cli"]


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line (``error: ... (see --help)``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _shorten(path) -> str:
    text = str(path or "")
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_cli(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)`` and turn the package's errors into one line and an exit code."""
    from .config import ConfigError
    from .trainer import NonFiniteError

    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): stopped, keeping every finished run and the last checkpoint; the same command "
              "continues from there (python -m guiding_nc.train: add resume=true)", file=sys.stderr)
        return 130
    except NonFiniteError as exc:
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        return 3
    except FileNotFoundError as exc:  # DatasetNotFoundError included
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        return 4
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        where = exc.filename or ""
        print(f"error: cannot write {where} ({exc.strerror or type(exc).__name__}); choose a directory you can "
              "write to", file=sys.stderr)
        return 2
    except FileExistsError as exc:
        print(f"error: {exc.filename or ''} is in the way ({exc.strerror or 'exists'}); move it or choose another "
              "path", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            print(f"error: a file name is too long ({_shorten(exc.filename)}); use shorter names", file=sys.stderr)
            return 2
        if exc.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            fix = "choose a directory you can write to" if exc.errno == errno.EROFS else \
                "free space or choose another directory"
            print(f"error: cannot write {exc.filename or ''} ({exc.strerror}); {fix}", file=sys.stderr)
            return 2
        raise
    except (ConfigError, ValueError, TypeError) as exc:
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        return 2
