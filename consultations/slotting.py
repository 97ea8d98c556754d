"""Pure slot arithmetic: weekly wall-clock windows → UTC slot intervals, DST-correct.

Windows are wall-clock times in the provider's timezone. Each window's start and end are
turned into absolute instants with zoneinfo, and slots are stepped in absolute time between
them, so a slot always lasts exactly the consultation length:

* spring forward (e.g. 02:00 → 03:00): a window spanning the gap is an hour shorter, and no
  slot starts at a wall-clock time that does not exist; a window edge inside the gap moves
  to the moment the clocks jump;
* fall back (e.g. 02:00 → 01:00): a window spanning the repeated hour is an hour longer and
  the repeated wall-clock times get one slot each occurrence; an edge at an ambiguous time
  means its first occurrence (``fold=0``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Window:
    """A wall-clock window on a weekday (0 = Monday)."""

    weekday: int
    start_time: time
    end_time: time


@dataclass(frozen=True)
class DayException:
    """``off`` (no times = whole day) or ``extra`` hours on one local date."""

    date: date
    kind: str
    start_time: time | None = None
    end_time: time | None = None


def _exists(day: date, wall: time, tz: ZoneInfo) -> bool:
    local = datetime.combine(day, wall, tzinfo=tz)
    round_trip = local.astimezone(UTC).astimezone(tz)
    return round_trip.replace(tzinfo=None) == local.replace(tzinfo=None)


def local_instant(day: date, wall: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of a wall-clock time on a local date.

    Ambiguous times take their first occurrence; non-existent times (in a spring-forward
    gap) move forward to the first wall-clock minute that exists, i.e. the transition.
    """
    current = datetime.combine(day, wall)
    for _ in range(24 * 60):  # gaps are at most a few hours; bounded for safety
        if _exists(current.date(), current.time(), tz):
            return current.replace(tzinfo=tz, fold=0).astimezone(UTC)
        current += timedelta(minutes=1)
    raise ValueError(f"No valid local time near {day} {wall} in {tz.key}")


def _merge(intervals: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def day_intervals(
    *, day: date, windows: Iterable[Window], exceptions: Iterable[DayException], tz: ZoneInfo
) -> tuple[list[tuple[datetime, datetime]], list[tuple[datetime, datetime]]]:
    """(working intervals, off intervals) of one local date, as UTC instants."""
    todays = [e for e in exceptions if e.date == day]
    if any(e.kind == "off" and e.start_time is None for e in todays):
        return [], []
    working = [
        (local_instant(day, w.start_time, tz), local_instant(day, w.end_time, tz))
        for w in windows
        if w.weekday == day.weekday()
    ]
    working += [
        (local_instant(day, e.start_time, tz), local_instant(day, e.end_time, tz))
        for e in todays
        if e.kind == "extra" and e.start_time is not None and e.end_time is not None
    ]
    off = [
        (local_instant(day, e.start_time, tz), local_instant(day, e.end_time, tz))
        for e in todays
        if e.kind == "off" and e.start_time is not None and e.end_time is not None
    ]
    return _merge((s, e) for s, e in working if s < e), off


def slot_times(
    *,
    windows: Iterable[Window],
    exceptions: Iterable[DayException],
    tz: ZoneInfo,
    first_day: date,
    days: int,
    minutes: int,
    not_before: datetime | None = None,
) -> Iterator[tuple[datetime, datetime]]:
    """UTC (start, end) of every slot on ``days`` local dates from ``first_day``.

    Raises ValueError for a non-positive ``minutes`` (the cursor would never advance).
    """
    if minutes <= 0:
        raise ValueError(f"The consultation length must be positive, not {minutes} minutes.")
    windows = list(windows)
    exceptions = list(exceptions)
    step = timedelta(minutes=minutes)
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        working, off = day_intervals(day=day, windows=windows, exceptions=exceptions, tz=tz)
        for start, end in working:
            cursor = start
            while cursor + step <= end:
                slot_end = cursor + step
                blocked = any(cursor < o_end and slot_end > o_start for o_start, o_end in off)
                if not blocked and (not_before is None or cursor >= not_before):
                    yield cursor, slot_end
                cursor = slot_end  # step > 0, so every turn moves on


def interval_covered(
    *,
    start: datetime,
    end: datetime,
    windows: Iterable[Window],
    exceptions: Iterable[DayException],
    tz: ZoneInfo,
) -> bool:
    """Whether [start, end) lies inside working time and touches no time off."""
    windows = list(windows)
    exceptions = list(exceptions)
    first = start.astimezone(tz).date()
    last = (end - timedelta(microseconds=1)).astimezone(tz).date()
    working: list[tuple[datetime, datetime]] = []
    off: list[tuple[datetime, datetime]] = []
    for offset in range((last - first).days + 1):
        day_working, day_off = day_intervals(
            day=first + timedelta(days=offset), windows=windows, exceptions=exceptions, tz=tz
        )
        working += day_working
        off += day_off
    if any(start < o_end and end > o_start for o_start, o_end in off):
        return False
    return any(w_start <= start and end <= w_end for w_start, w_end in _merge(working))


def windows_overlap(windows: Iterable[Window]) -> list[tuple[Window, Window]]:
    """Pairs of windows on the same weekday that overlap (invalid input)."""
    by_day: dict[int, list[Window]] = {}
    for window in windows:
        by_day.setdefault(window.weekday, []).append(window)
    clashes = []
    for day_windows in by_day.values():
        ordered = sorted(day_windows, key=lambda w: w.start_time)
        for before, after in pairwise(ordered):
            if after.start_time < before.end_time:
                clashes.append((before, after))
    return clashes
