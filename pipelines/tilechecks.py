"""What every tile is checked against before it is stored: plausible dates and values.

The ingest records the checks (:class:`TileChecks`) in the store's plan and attributes, so a resumed
ingest checks the rest of the archive the same way; a tile that fails them is quarantined with the reason
these functions return (``docs/store-format.md``, Quarantine).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

EPOCH = _dt.date(1970, 1, 1)
DEFAULT_DATE_RANGE = ("1970-01-01", "2100-12-31")


def parse_date_range(text: str) -> tuple[str, str]:
    """``"YYYY-MM-DD:YYYY-MM-DD"`` -> (first, last) ISO dates; ValueError with the reason otherwise."""
    first, sep, last = str(text).strip().partition(":")
    if not sep:
        raise ValueError(f"expected FIRST:LAST as YYYY-MM-DD:YYYY-MM-DD, got {text!r}")
    try:
        a, b = _dt.date.fromisoformat(first.strip()), _dt.date.fromisoformat(last.strip())
    except ValueError as e:
        raise ValueError(f"expected FIRST:LAST as YYYY-MM-DD:YYYY-MM-DD, got {text!r} ({e})") from None
    if a < EPOCH:
        raise ValueError(f"{a} is before 1970-01-01: stored dates count days from 1970-01-01 and negative "
                         "days collide with the -1 padding code")
    if b < a:
        raise ValueError(f"{b} is before {a}")
    return a.isoformat(), b.isoformat()


def _day_text(day: int) -> str:
    try:
        return (EPOCH + _dt.timedelta(days=int(day))).isoformat()
    except (OverflowError, OSError):
        return "no calendar date"


@dataclass(frozen=True)
class TileChecks:
    """What every tile is checked against besides the layout (recorded in the plan and the attributes)."""

    first: str = DEFAULT_DATE_RANGE[0]
    last: str = DEFAULT_DATE_RANGE[1]
    max_dates: int | None = None

    @property
    def day_range(self) -> tuple[int, int]:
        return ((_dt.date.fromisoformat(self.first) - EPOCH).days, (_dt.date.fromisoformat(self.last) - EPOCH).days)

    def to_json(self) -> dict:
        return {"date_range": [self.first, self.last], "max_dates": self.max_dates}

    @classmethod
    def from_json(cls, d: dict | None) -> TileChecks:
        if not d:
            return cls()
        first, last = d.get("date_range") or DEFAULT_DATE_RANGE
        return cls(first, last, d.get("max_dates"))


# ticks per day of timestamp units a reader may have passed through as days, for the quarantine reason
_UNIT_FLOOR = 1_157  # 1973-03-03: below it, timestamps of different units overlap
_UNIT_HINTS = ((86_400, "seconds"), (86_400_000, "milliseconds"), (86_400_000_000, "microseconds"),
               (86_400_000_000_000, "nanoseconds"))


def check_dates(key: str, dates: np.ndarray, checks: TileChecks) -> str | None:
    """Why the (integer) dates of one sensor of one tile cannot be stored, or ``None``.

    Compared in 64 bits before the int32 cast, so a timestamp passed through as days never wraps into a
    plausible-looking date. -1 is the archive's "no date" (and the padding code); other negative days
    would be read as padding by the loader, so they are rejected like any date outside the range.
    """
    d = np.asarray(dates)
    if d.size == 0:
        return None
    if d.dtype.kind == "u" and d.max() > np.iinfo(np.int64).max:
        return f"sensor {key}: date value {int(d.max())} is not a day number"
    d = d.astype(np.int64)
    neg = d < -1
    if neg.any():
        v = int(d[neg][0])
        return (f"sensor {key}: negative day {v} (dates are days since 1970-01-01; -1 is reserved for unknown "
                "dates and padding)")
    lo, hi = checks.day_range
    out = (d != -1) & ((d < lo) | (d > hi))
    if not out.any():
        return None
    v = int(d[out][0])
    hint = ""
    for per_day, unit in _UNIT_HINTS if v > hi else ():
        if max(lo, _UNIT_FLOOR) <= v // per_day <= hi:
            hint = f"; it looks like a timestamp in {unit}, not a day number"
            break
    return (f"sensor {key}: date {_day_text(v)} (day {v}) outside the plausible range {checks.first}.."
            f"{checks.last} (--date-range){hint}")


def check_values(key: str, data: np.ndarray) -> str | None:
    """Why a sensor's values carry nothing (every value NaN or infinite), or ``None``."""
    if data.dtype.kind not in "fc" or data.size == 0 or np.isfinite(data).any():
        return None
    what = "NaN" if np.isnan(data).all() else "infinite" if np.isinf(data).all() else "NaN or infinite"
    return f"sensor {key}: all {data.size} values are {what}"
