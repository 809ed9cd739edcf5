"""`at`, `tz` and `window` of the answers query: ISO 8601 or plain language ("last Tuesday
14:30", "yesterday 9am", "เมื่อวาน 9 โมง"), resolved in an IANA time zone."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dateparser

from aitrail.errors import BadRequest

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d|day|w)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400, "day": 86400, "w": 604800}
MAX_WINDOW = timedelta(days=366)
EARLIEST, LATEST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)

# Thai clock words dateparser does not know: "9 โมง(เช้า)" 09:00, "บ่าย 2 โมง" 14:00,
# "2 ทุ่ม" 20:00, "เที่ยง" 12:00.
_THAI_CLOCK = [
    (re.compile(r"บ่าย\s*(\d{1,2})\s*โมง(?:เย็น)?"), lambda m: f" {int(m.group(1)) % 12 + 12:02d}:00 "),
    (re.compile(r"(\d{1,2})\s*โมงเย็น"), lambda m: f" {int(m.group(1)) % 12 + 12:02d}:00 "),
    (re.compile(r"(\d{1,2})\s*ทุ่ม"), lambda m: f" {int(m.group(1)) + 18:02d}:00 "),
    (re.compile(r"(\d{1,2})\s*โมง(?:เช้า)?"), lambda m: f" {int(m.group(1)):02d}:00 "),
    (re.compile(r"เที่ยง(?:วัน)?"), lambda m: " 12:00 "),
]


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory ("Asia"), a name too long
        raise BadRequest(f"unknown time zone {name!r}; use an IANA name such as Asia/Bangkok") from None


def parse_when(text: str, tz_name: str | None = None, *, now: datetime | None = None) -> datetime:
    """An aware UTC datetime for `text`, read in the time zone `tz_name` (default UTC)."""
    tz = zone(tz_name)
    original = text = text.strip()
    if not text:
        raise BadRequest("at is empty")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None:
        for pattern, repl in _THAI_CLOCK:
            text = pattern.sub(repl, text)
        base = (now or datetime.now(UTC)).astimezone(tz).replace(tzinfo=None)
        parsed = dateparser.parse(
            text,
            settings={
                "TIMEZONE": tz.key, "RETURN_AS_TIMEZONE_AWARE": True, "PREFER_DATES_FROM": "past",
                "RELATIVE_BASE": base,
            },
        )
        if parsed is None:
            raise BadRequest(
                f"cannot read the time {original!r}; use ISO 8601 (2026-11-24T14:30) or words such as "
                "'last Tuesday 14:30'"
            )
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise BadRequest(f"the time {original!r} is outside the years 1 to 9999") from None


def parse_window(text: str | None) -> timedelta:
    match = _WINDOW.match(text or "15m")
    if not match:
        raise BadRequest(f"cannot read the window {text!r}; use e.g. 30s, 15m, 2h, 1d")
    seconds = float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]
    if seconds > MAX_WINDOW.total_seconds():  # also inf: checked before timedelta() can overflow
        raise BadRequest("window is longer than 366 days")
    return timedelta(seconds=seconds)


def around(moment: datetime, window: timedelta) -> tuple[datetime, datetime]:
    """[moment - window, moment + window], cut at the first and last representable instants."""
    try:
        start = moment - window
    except OverflowError:
        start = EARLIEST
    try:
        end = moment + window
    except OverflowError:
        end = LATEST
    return start, end


def to_iso(moment: datetime) -> str:
    # isoformat pads the year to four digits (strftime's %Y does not, e.g. for year 999),
    # so the strings keep sorting in time order.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "000Z"
