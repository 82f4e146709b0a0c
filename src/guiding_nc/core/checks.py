"""Declared argument checks: a type, a range or a set of choices, and a one-line message.

Each check is a small object; ``check(name, value)`` returns ``value`` when it is accepted and
otherwise raises :class:`ArgumentError` (a ``ValueError``; :class:`ArgumentTypeError`, also a
``TypeError``, when the type is wrong) whose one line names the argument, what it accepts and
what it got, e.g. ``delta must be a finite number > 0, got -1.0``.

The library's public functions (:func:`guiding_nc.core.nearest.nearest_etf`,
:class:`~guiding_nc.core.nearest.NearestETF`, :func:`~guiding_nc.core.etf.etf_classifier`, the heads,
the metrics) check their arguments with these objects, and the training settings
(:class:`guiding_nc.training.config.TrainConfig`) declare one per setting, reusing the library's
where they mean the same thing (:data:`DELTA`, :data:`TAU`, :data:`EMA_FLOOR`, :data:`THREADS`).

Rules every check follows: ``True``/``False`` are never numbers; numbers are finite unless a
range says otherwise; a list is never empty unless declared so.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple, Union

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "Check",
    "Integer",
    "Real",
    "Flag",
    "Text",
    "Choice",
    "Maybe",
    "ListOf",
    "Mapping",
    "AnyValue",
    "Name",
    "PathText",
    "Device",
    "max_threads",
    "is_number",
    "DELTA",
    "PROX_DELTA",
    "TAU",
    "EMA_FLOOR",
    "THREADS",
    "CLASSES",
    "MAX_NAME_BYTES",
    "MAX_COMPONENT_BYTES",
    "MAX_PATH_BYTES",
    "check_all",
]

#: A file name may hold 255 bytes on the usual file systems; a path 4096.
MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4096
#: A name that becomes one path component leaves room for what is appended to it
#: (``.superseded-<hash>``, a temporary file's prefix and suffix).
MAX_NAME_BYTES = 200


class ArgumentError(ValueError):
    """An argument or setting outside what it accepts; the message is one line."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument or setting of the wrong type (``True`` given for a number, say)."""


def is_number(value: Any) -> bool:
    """A real number that is not a bool (``True`` is an ``int`` to Python, not to these checks)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "..." + text[-12:]


def _bound(b: Union[None, float, Callable[[], float]]):
    return b() if callable(b) else b


class Check:
    """Base class: ``check(name, value) -> value`` or one-line :class:`ArgumentError`."""

    #: What the check accepts, as the message says it ("a positive integer").
    accepts: str = "a value"

    def describe(self) -> str:
        return self.accepts

    #: Why, shown in parentheses after what is accepted.
    why: str = ""

    def fail(self, name: str, value: Any, *, kind: type = ArgumentError, note: str = "") -> None:
        why = f" ({self.why})" if self.why else ""
        raise kind(f"{name} must be {self.describe()}{why}, got {_show(value)}{note}")

    def __call__(self, name: str, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class AnyValue(Check):
    accepts = "any value"

    def __call__(self, name, value):
        return value


class Integer(Check):
    """An ``int`` (not a bool) in ``[low, high]``; a bound may be a callable (read at check time).
    ``why`` is shown in parentheses after what is accepted."""

    def __init__(self, low: Optional[int] = None, high: Union[None, int, Callable[[], int]] = None, *,
                 why: str = "", high_text: str = ""):
        self.low, self.high, self.why, self.high_text = low, high, why, high_text

    def describe(self) -> str:
        high = _bound(self.high)
        extra = f" ({self.high_text})" if self.high_text else ""
        if self.low is not None and high is not None:
            return f"an integer from {self.low} to {high}{extra}"
        if self.low == 1:
            return "a positive integer"
        if self.low is not None:
            return f"an integer >= {self.low}"
        if high is not None:
            return f"an integer <= {high}{extra}"
        return "an integer"

    def __call__(self, name, value):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            self.fail(name, value, kind=ArgumentTypeError)
        high = _bound(self.high)
        if (self.low is not None and value < self.low) or (high is not None and value > high):
            self.fail(name, value)
        return value


class Real(Check):
    """A finite real number (an int is accepted; a bool is not) in the declared interval."""

    def __init__(self, low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
                 high_open: bool = False, why: str = ""):
        self.low, self.high, self.low_open, self.high_open, self.why = low, high, low_open, high_open, why

    def describe(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            return (f"a number in {'(' if self.low_open else '['}{lo:g}, {hi:g}{')' if self.high_open else ']'}")
        if lo is not None:
            return f"a finite number {'>' if self.low_open else '>='} {lo:g}"
        if hi is not None:
            return f"a finite number {'<' if self.high_open else '<='} {hi:g}"
        return "a finite number"

    def __call__(self, name, value):
        if not is_number(value):
            self.fail(name, value, kind=ArgumentTypeError)
        v = float(value)
        if not math.isfinite(v):
            self.fail(name, value)
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            self.fail(name, value)
        if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
            self.fail(name, value)
        return value


class Flag(Check):
    accepts = "true or false"

    def __call__(self, name, value):
        if not isinstance(value, bool):
            self.fail(name, value, kind=ArgumentTypeError)
        return value


class Text(Check):
    """A string (``empty=False``: not empty)."""

    def __init__(self, empty: bool = True):
        self.empty = empty
        self.accepts = "a string" if empty else "a non-empty string"

    def __call__(self, name, value):
        if not isinstance(value, str):
            self.fail(name, value, kind=ArgumentTypeError)
        if not self.empty and not value:
            self.fail(name, value)
        return value


def _choice_text(c: Any) -> str:
    return str(c).lower() if isinstance(c, bool) else str(c)


class Choice(Check):
    """One of ``choices`` (a sequence, or a callable that returns one, read at check time).

    ``style="unknown"`` words the message ``unknown NAME 'x'; choose one of a, b`` (names of
    things: methods, models); the default ``NAME must be one of a, b, got 'x'``.  ``fold_case``
    compares strings in lower case.  A bool matches only a bool choice (``True`` is not ``1``).
    """

    def __init__(self, choices: Union[Sequence[Any], Callable[[], Sequence[Any]]], *, style: str = "must",
                 fold_case: bool = False, label: str = ""):
        self._choices, self.style, self.fold_case, self.label = choices, style, fold_case, label

    @property
    def choices(self) -> Tuple[Any, ...]:
        return tuple(self._choices() if callable(self._choices) else self._choices)

    def describe(self) -> str:
        return "one of " + ", ".join(_choice_text(c) for c in self.choices)

    def matches(self, value: Any) -> bool:
        for c in self.choices:
            if isinstance(c, bool) or isinstance(value, bool):
                if isinstance(c, bool) and isinstance(value, bool) and c is value:
                    return True
                continue
            if self.fold_case and isinstance(c, str) and isinstance(value, str):
                if c.lower() == value.lower():
                    return True
            elif type(c) is type(value) and c == value:
                return True
        return False

    def __call__(self, name, value):
        if self.matches(value):
            return value
        if self.style == "unknown":
            label = self.label or name
            raise ArgumentError(f"unknown {label} {_show(value)}; choose one of "
                                + ", ".join(_choice_text(c) for c in self.choices))
        self.fail(name, value)


class Maybe(Check):
    """``None`` (shown as ``none_text``: ``null`` in a config, ``None`` in Python) or ``inner``."""

    def __init__(self, inner: Check, none_text: str = "null", meaning: str = ""):
        self.inner, self.none_text, self.meaning = inner, none_text, meaning

    def describe(self) -> str:
        meaning = f" ({self.meaning})" if self.meaning else ""
        return f"{self.inner.describe()} or {self.none_text}{meaning}"

    def __call__(self, name, value):
        if value is None:
            return value
        try:
            return self.inner(name, value)
        except ArgumentError as exc:
            text, said = str(exc), f"{name} must be {self.inner.describe()}"
            if not text.startswith(said):
                raise  # about a part of the value (a list's item), already precise
            raise type(exc)(f"{name} must be {self.describe()}{text[len(said):]}") from None


class ListOf(Check):
    """A list (or tuple) of items each accepted by ``item``; ``min_len``/``max_len`` bound its
    length (``length`` fixes it), ``unique`` refuses repeats."""

    def __init__(self, item: Check, *, min_len: int = 1, max_len: Optional[int] = None, length: Optional[int] = None,
                 unique: bool = False, example: str = ""):
        self.item, self.min_len, self.max_len, self.length = item, min_len, max_len, length
        self.unique, self.example = unique, example

    def describe(self) -> str:
        if self.length is not None:
            size = f"a list of {self.length}"
        elif self.min_len >= 1:
            size = "a non-empty list of"
        else:
            size = "a list of"
        what = self.item.describe()
        text = f"{size} items, each {what}"
        if self.unique:
            text += ", without repeats"
        return text + (f", e.g. {self.example}" if self.example else "")

    def __call__(self, name, value):
        if not isinstance(value, (list, tuple)):
            self.fail(name, value, kind=ArgumentTypeError)
        n = len(value)
        if (self.length is not None and n != self.length) or n < self.min_len or \
                (self.max_len is not None and n > self.max_len):
            self.fail(name, value)
        for i, v in enumerate(value):
            self.item(f"{name}[{i}]", v)
        if self.unique:
            seen = []
            for v in value:
                if v in seen:
                    self.fail(name, value, note=f" ({_show(v)} is repeated)")
                seen.append(v)
        return value


class Mapping(Check):
    """A mapping with string keys (``example`` shows one in the message)."""

    def __init__(self, example: str = "{hidden: [64]}"):
        self.accepts = f"a mapping, e.g. {example}" if example else "a mapping"

    def __call__(self, name, value):
        if not isinstance(value, dict):
            self.fail(name, value, kind=ArgumentTypeError)
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            self.fail(name, value, note=f" (key {_show(bad[0])} is not a name)")
        return value


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


class Name(Check):
    """A name that becomes one path component: no separator, not ``.``/``..``, no surrounding
    blanks or NUL, at most :data:`MAX_NAME_BYTES` bytes."""

    accepts = "a plain name (no '/', '\\' or '..')"

    def __call__(self, name, value):
        if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value \
                or value != value.strip() or "\0" in value:
            self.fail(name, value, kind=ArgumentError if isinstance(value, str) else ArgumentTypeError)
        if _utf8_len(value) > MAX_NAME_BYTES:
            raise ArgumentError(f"{name} is {_utf8_len(value)} bytes long; a name becomes a file name and may hold at "
                                f"most {MAX_NAME_BYTES}: choose a shorter one")
        return value


class PathText(Check):
    """A path as text: not empty, no NUL, every component at most 255 bytes, the whole at most 4096."""

    accepts = "a path"

    def __call__(self, name, value):
        if not isinstance(value, (str, os.PathLike)):
            self.fail(name, value, kind=ArgumentTypeError)
        text = os.fspath(value)
        if not isinstance(text, str) or not text or "\0" in text:
            self.fail(name, value)
        for part in text.replace("\\", "/").split("/"):
            if _utf8_len(part) > MAX_COMPONENT_BYTES:
                raise ArgumentError(f"{name} has a path component of {_utf8_len(part)} bytes "
                                    f"({part[:20]}...); a file system allows {MAX_COMPONENT_BYTES}: shorten it")
        if _utf8_len(text) > MAX_PATH_BYTES:
            raise ArgumentError(f"{name} is a path of {_utf8_len(text)} bytes; at most {MAX_PATH_BYTES}: shorten it")
        return value


class Device(Check):
    """``auto`` or a torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""

    accepts = "auto or a torch device such as cpu, cuda, cuda:1"

    def __call__(self, name, value):
        if not isinstance(value, str):
            self.fail(name, value, kind=ArgumentTypeError)
        if value != "auto":
            import torch

            try:
                torch.device(value)
            except (RuntimeError, TypeError) as exc:
                raise ArgumentError(f"invalid {name} {value!r}: {str(exc).splitlines()[0]}") from None
        return value


def max_threads() -> int:
    """The most intra-op threads a setting may ask for: 4 per CPU of this machine.  Far more (a
    typo such as 5000) makes the OpenMP runtime crash the process without a message."""
    return 4 * (os.cpu_count() or 1)


# -------------------------------------------------------------- shared declarations
#: The proximal coefficient of the nearest-ETF problem (Eq. 7).  ``A = 2 H M + delta P`` must stay
#: finite in float32, and beyond 1e6 the solution is the proximal point to float64 precision.
DELTA = Real(0.0, 1e6, low_open=True, why="the proximal term makes U* unique")
#: :func:`~guiding_nc.core.nearest.nearest_etf` also takes ``delta = 0`` (Eq. 6, with ``backward='none'``).
PROX_DELTA = Real(0.0, 1e6)
#: The logits' temperature.
TAU = Real(0.0, 1e4, low_open=True)
#: The floor of the EMA factor (Eq. 9).
EMA_FLOOR = Real(0.0, 1.0, low_open=True)
#: Intra-op threads of torch.
THREADS = Integer(1, max_threads, high_text="4 per CPU of this machine")
#: A number of classes.
CLASSES = Integer(2, why="a simplex ETF needs at least 2 classes")


def check_all(pairs: Iterable[Tuple[str, Check, Any]]) -> None:
    """Run ``check(name, value)`` for every ``(name, check, value)``."""
    for name, check, value in pairs:
        check(name, value)
