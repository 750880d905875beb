"""Valid ranges of settings, and the one line that says a value lies outside its range.

Hydra-free, at the bottom layer: the table of every ``conf/`` key (:mod:`vit_ft.tasks.settings_ranges`)
is built from these kinds, and checks that need the model (the LoRA rank against the width of the
layers it adapts, :func:`vit_ft.weights.lora.inject_lora`) word their line with :func:`out_of_range`.
Each kind also lists values just inside and just outside its bounds (:meth:`Range.samples`), so the
tests probe every declared range from the table itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vit_ft.errors import ConfigError

Sample = tuple[Any, bool]  # (value, whether the range accepts it)
NOT_A_VALUE = "no-such-value"  # a string no enum of vit-ft allows


def out_of_range(key: str, value: Any, must: str) -> ConfigError:
    """``<key>=<value> is out of range: must be <must>``: the one line every range check gives."""
    return ConfigError(f"{key}={value!r} is out of range: must be {must}")


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def member(v: Any, values: Iterable[Any]) -> bool:
    """``v`` is one of ``values``, type included (``True`` is not ``1``, ``"32"`` is not ``32``)."""
    return any(type(v) is type(a) and v == a for a in values)


class Range:
    """What one key accepts; ``null``: ``None`` too (where the YAML allows null)."""

    null: bool = False

    def accepts(self, value: Any) -> bool:
        return (value is None and self.null) or (value is not None and self.accepts_value(value))

    def accepts_value(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        return self.phrase() + (" or null" if self.null else "")

    def phrase(self) -> str:
        raise NotImplementedError

    def samples(self) -> list[Sample]:
        """Values just inside (True) and just outside (False) each bound; None per ``null``."""
        return [(None, self.null), *self.value_samples()]

    def value_samples(self) -> list[Sample]:
        raise NotImplementedError


def _num(x: float, integer: bool) -> str:
    return str(int(x)) if integer else f"{x:g}"


@dataclass(frozen=True)
class Num(Range):
    """A number between ``lo`` and ``hi`` (each bound closed unless ``*_open``), never inf or nan;
    ``integer``: an int; ``also``: values allowed besides (e.g. ``-1``: unlimited)."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    null: bool = False
    also: tuple[Any, ...] = ()

    def accepts_value(self, v: Any) -> bool:
        if member(v, self.also):
            return True
        if not is_number(v) or (self.integer and not isinstance(v, int)) or not math.isfinite(v):
            return False
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return above and below

    def phrase(self) -> str:
        kind = "an integer" if self.integer else "a number"
        lo, hi = math.isfinite(self.lo), math.isfinite(self.hi)
        a, b = _num(self.lo, self.integer) if lo else "", _num(self.hi, self.integer) if hi else ""
        if lo and hi:
            text = f"{kind} in {'(' if self.lo_open else '['}{a}, {b}{')' if self.hi_open else ']'}"
        elif lo:
            text = f"{kind} {'>' if self.lo_open else '>='} {a}"
        elif hi:
            text = f"{kind} {'<' if self.hi_open else '<='} {b}"
        else:
            text = kind
        if not self.integer:
            text += " (finite)" if not (lo and hi) else ""
        return text + "".join(f" or {a!r}" for a in self.also)

    def value_samples(self) -> list[Sample]:
        out: list[Sample] = []
        for bound, is_open, away in ((self.lo, self.lo_open, -math.inf), (self.hi, self.hi_open, math.inf)):
            if not math.isfinite(bound):
                continue
            if self.integer:
                step = -1 if away < 0 else 1
                out += [(int(bound), True), (int(bound) + step, False)]
            elif is_open:
                out += [(float(bound), False), (math.nextafter(bound, -away), True)]
            else:
                out += [(float(bound), True), (math.nextafter(bound, away), False)]
        if not math.isfinite(self.hi):
            big = (2**62) if self.integer else 1e300
            out.append((big if big > self.lo else self.lo + 1, True))
        if self.integer:
            out += [(int(self.lo if math.isfinite(self.lo) else 0) + 0.5, False), (True, False)]
        else:
            out += [(math.inf, False), (math.nan, False), (-math.inf, False)]
        out += [(a, True) for a in self.also]
        out.append(("abc", False))
        return [(v, ok) for v, ok in out if ok or not member(v, self.also)]


@dataclass(frozen=True)
class OneOf(Range):
    """One of ``values`` (compared as given: ``32`` and ``"32"`` differ unless both are listed);
    ``lazy``: more values known only at run time (e.g. timm's optimizer names); ``text``: how the
    line names them when they are too many to list."""

    values: tuple[Any, ...] = ()
    null: bool = False
    lazy: Callable[[], Iterable[Any]] | None = None
    text: str = ""

    def allowed(self) -> set[Any]:
        more = set(self.lazy()) if self.lazy is not None else set()
        return set(self.values) | more

    def accepts_value(self, v: Any) -> bool:
        return member(v, self.allowed())

    def phrase(self) -> str:
        if self.text or len(self.values) == 1:
            return self.text or str(self.values[0])
        return "one of " + ", ".join(str(v) for v in self.values)

    def value_samples(self) -> list[Sample]:
        good = self.values or tuple(sorted(self.allowed(), key=str)[:2])
        return [(v, True) for v in good] + [(NOT_A_VALUE, False), (1.5, False)]


@dataclass(frozen=True)
class ListOf(Range):
    """A list whose every element is ``each``; ``length``: exactly that many; ``ordered``: not
    decreasing; ``scalar``: a single value stands for a list of one."""

    each: Range = field(default_factory=Num)
    length: int | None = None
    ordered: bool = False
    scalar: bool = False
    null: bool = False

    def accepts_value(self, v: Any) -> bool:
        if self.scalar and not isinstance(v, (list, tuple)):
            v = [v]
        if not isinstance(v, (list, tuple)) or not v:
            return False
        if self.length is not None and len(v) != self.length:
            return False
        if not all(self.each.accepts(x) for x in v):
            return False
        return not self.ordered or all(a <= b for a, b in zip(v, v[1:], strict=False))

    def phrase(self) -> str:
        n = f"{self.length} values" if self.length else "values"
        text = f"a list of {n}, each {self.each.describe()}"
        return text + (", none smaller than the one before" if self.ordered else "")

    def value_samples(self) -> list[Sample]:
        n = self.length or 1
        out = [([v] * n, ok) for v, ok in self.each.samples() if v is not None or ok]
        good = next(v for v, ok in self.each.samples() if ok and v is not None)
        out.append(([], False))
        if self.length:
            out.append(([good] * (self.length + 1), False))
        if self.ordered and self.length == 2:
            lo, hi = sorted(v for v, ok in self.each.value_samples() if ok and is_number(v))[::-1][:2][::-1]
            if lo < hi:
                out.append(([hi, lo], False))
        return out


@dataclass(frozen=True)
class Pattern(Range):
    """A string matching ``regex`` in full, worded as ``text``."""

    regex: str = ""
    text: str = ""
    good: tuple[str, ...] = ()
    null: bool = False

    def accepts_value(self, v: Any) -> bool:
        return isinstance(v, str) and re.fullmatch(self.regex, v) is not None

    def phrase(self) -> str:
        return self.text

    def value_samples(self) -> list[Sample]:
        return [(g, True) for g in self.good] + [(NOT_A_VALUE, False)]


@dataclass(frozen=True)
class Node(Range):
    """A config node (a mapping, e.g. an instantiated ``_target_``): its own keys are ranged apart."""

    null: bool = False

    def accepts_value(self, v: Any) -> bool:
        return isinstance(v, Mapping)

    def phrase(self) -> str:
        return "a config node (_target_: ...)"

    def value_samples(self) -> list[Sample]:
        return [({"_target_": "builtins.dict"}, True), (3, False)]


@dataclass(frozen=True)
class AnyOf(Range):
    """Any of ``options`` (e.g. ``auto`` or a number in (0, 1])."""

    options: tuple[Range, ...] = ()
    null: bool = False

    def accepts_value(self, v: Any) -> bool:
        return any(o.accepts(v) for o in self.options)

    def phrase(self) -> str:
        return ", or ".join(o.describe() for o in self.options)

    def describe(self) -> str:
        return self.phrase() + (", or null" if self.null else "")

    def value_samples(self) -> list[Sample]:
        out: list[Sample] = []
        for o in self.options:
            for v, ok in o.value_samples():
                if ok or not any(x.accepts(v) for x in self.options):
                    out.append((v, ok))
        return out


def check_value(key: str, value: Any, rng: Range) -> None:
    """Raise the range line for ``key`` when ``value`` is outside ``rng``."""
    if not rng.accepts(value):
        raise out_of_range(key, value, rng.describe())
