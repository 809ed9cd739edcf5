"""Record times: ISO 8601, UTC, exactly nine fractional digits, `Z` suffix.

`2026-11-24T07:30:00.123456789Z` — fixed width, so the text sorts in time order and keeps
the nanosecond precision OTLP gives us. `ns_to_iso` runs a few times per span on the
collector's hot path, hence the one-entry caches of the last whole second and the last day
formatted.
"""

from __future__ import annotations

import calendar
import time

_last_second: tuple[int, str] = (-1, "")
_last_day: tuple[int, str] = (-1, "")


def ns_to_iso(ns: int) -> str:
    """Nanoseconds since the Unix epoch → `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (UTC)."""
    global _last_second, _last_day
    seconds, frac = divmod(ns, 1_000_000_000)
    cached_second, prefix = _last_second
    if seconds != cached_second:
        day, second_of_day = divmod(seconds, 86_400)  # UTC has no leap seconds in Unix time
        cached_day, date = _last_day
        if day != cached_day:
            t = time.gmtime(seconds)
            date = "%04d-%02d-%02dT" % (t.tm_year, t.tm_mon, t.tm_mday)
            _last_day = (day, date)
        minutes, second = divmod(second_of_day, 60)
        prefix = "%s%02d:%02d:%02d." % (date, minutes // 60, minutes % 60, second)
        _last_second = (seconds, prefix)
    return "%s%09dZ" % (prefix, frac)


def iso_to_ns(text: str) -> int:
    """Inverse of `ns_to_iso`; also reads fewer fractional digits (or none) and `+00:00`.

    Other UTC offsets are applied. Raises `ValueError` on anything else."""
    s = text.strip()
    offset_s = 0
    if s.endswith(("Z", "z")):
        s = s[:-1]
    elif len(s) >= 6 and s[-6] in "+-" and s[-3] == ":":
        sign = 1 if s[-6] == "+" else -1
        offset_s = sign * (int(s[-5:-3]) * 3600 + int(s[-2:]) * 60)
        s = s[:-6]
    date_part, sep, time_part = s.partition("T")
    if not sep:
        date_part, sep, time_part = s.partition(" ")
    if not sep:
        raise ValueError(f"not an ISO 8601 date-time: {text!r}")
    whole, _, frac = time_part.partition(".")
    if frac and (not frac.isdigit() or len(frac) > 9):
        raise ValueError(f"bad fractional seconds in {text!r}")
    try:
        year, month, day = (int(x) for x in date_part.split("-"))
        hour, minute, second = (int(x) for x in whole.split(":"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 date-time: {text!r}") from None
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError(f"out-of-range field in {text!r}")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset_s
    return seconds * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)
