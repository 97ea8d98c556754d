"""Users' notification preferences: muted kinds, and quiet hours in their own timezone."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta

from django.db import transaction

from medease.exceptions import InvalidInput
from workers.models import NotificationKind, NotificationPreference


def preference_of(user) -> NotificationPreference | None:
    """The user's saved preferences, or None (everything on, no quiet hours)."""
    try:
        return user.notification_preference
    except NotificationPreference.DoesNotExist:
        return None


def user_timezone(user) -> zoneinfo.ZoneInfo:
    """The user's timezone; UTC when unset or unknown."""
    try:
        return zoneinfo.ZoneInfo(user.timezone or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def quiet_hours_end(
    *, preference: NotificationPreference | None, tz: zoneinfo.ZoneInfo, now: datetime
) -> datetime | None:
    """When the quiet hours around ``now`` end (aware, UTC), or None outside quiet hours.

    Start and end are wall-clock times in the user's timezone; a window whose end is not
    after its start wraps midnight (22:00-07:00). DST is zoneinfo's business: an end that
    falls in a skipped hour resolves to the instant after the jump.
    """
    if preference is None or preference.quiet_hours_start is None:
        return None
    start, end = preference.quiet_hours_start, preference.quiet_hours_end
    if start == end:
        return None
    local = now.astimezone(tz)
    clock = local.time().replace(tzinfo=None)
    if start < end:
        inside = start <= clock < end
        end_date = local.date()
    else:  # wraps midnight
        inside = clock >= start or clock < end
        end_date = local.date() + timedelta(days=1) if clock >= start else local.date()
    if not inside:
        return None
    ends = datetime.combine(end_date, end, tzinfo=tz)
    # Round-trip through UTC normalises a non-existent local time (spring forward).
    ends = ends.astimezone(zoneinfo.ZoneInfo("UTC"))
    return ends if ends > now else now + timedelta(minutes=1)


def notification_preferences_update(
    *,
    user,
    muted_kinds: list[str] | None = None,
    quiet_hours_start=None,
    quiet_hours_end=None,
    set_quiet_hours: bool = False,
) -> NotificationPreference:
    """Change a user's muted kinds and/or quiet hours (``set_quiet_hours`` to change those)."""
    with transaction.atomic():
        preference, _ = NotificationPreference.objects.select_for_update().get_or_create(user=user)
        if muted_kinds is not None:
            unknown = sorted(set(muted_kinds) - set(NotificationKind.values))
            if unknown:
                raise InvalidInput(
                    "Unknown notification kinds.",
                    fields={"muted_kinds": [f"Unknown kind: {kind}" for kind in unknown]},
                )
            preference.muted_kinds = sorted(set(muted_kinds))
        if set_quiet_hours:
            if (quiet_hours_start is None) != (quiet_hours_end is None):
                raise InvalidInput(
                    "Give both ends of the quiet hours, or neither.",
                    fields={"quiet_hours": ["Give both ends, or neither."]},
                )
            if quiet_hours_start is not None and quiet_hours_start == quiet_hours_end:
                raise InvalidInput(
                    "Quiet hours must not start and end at the same time.",
                    fields={"quiet_hours_end": ["Must differ from the start."]},
                )
            preference.quiet_hours_start = quiet_hours_start
            preference.quiet_hours_end = quiet_hours_end
        preference.save()
    return preference
