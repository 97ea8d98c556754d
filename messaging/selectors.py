"""Reads of chat data. Callers authorize the consultation first
(``consultations.selectors.consultation_get_for_user``); these then scope by it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

from django.db import connections, router
from django.utils import timezone

from accounts.models import AuthToken, User
from consultations.models import Consultation, clinic_scope
from consultations.selectors import consultation_get_for_user
from medease import db as db_routing
from medease.exceptions import NotFound
from messaging.models import Message, MessageClientId

# What the audit log calls a read of a consultation's chat history (PHI).
HISTORY_AUDIT_TYPE = "consultation.messages"


class ChatConsultation(NamedTuple):
    """The columns of a consultation its chat needs (the send service and the audit read
    ``pk``, ``patient_id``, ``provider_id``, ``organization_id`` like a Consultation's)."""

    pk: int
    patient_id: int
    provider_id: int
    organization_id: int | None
    status: str


# The chat's hot paths read one consultation's few columns with plain SQL: the ORM form
# (four tables joined, three models built) cost a sixth of history's and send's CPU.
_CHAT_CONSULTATION_SQL = (
    "SELECT id, patient_id, provider_id, organization_id, status"
    " FROM consultations_consultation WHERE id = %s"
)
# The only columns clinic_scope names; checked before one is written into the SQL.
_SCOPE_COLUMNS = frozenset({"patient_id", "provider_id", "organization_id"})


def _scope_condition(user: User, *, alias: str) -> tuple[str, list]:
    """``visible_to``'s rule as an SQL condition on the consultation (``alias`` + column);
    NotFound when the user sees no consultation at all."""
    if getattr(user, "is_superuser", False):
        return "", []
    scope = clinic_scope(user)
    if scope is None or scope[0] not in _SCOPE_COLUMNS:
        raise NotFound("Consultation not found.")
    return f" AND {alias}{scope[0]} = %s", [scope[1]]


def chat_consultation(*, user: User, consultation_id: int) -> ChatConsultation:
    """The consultation's chat columns when the user may see it, else NotFound.

    The same rule as ``consultation_get_for_user`` (``Consultation.objects.visible_to``:
    superusers everything, otherwise ``clinic_scope``), in one plain query.
    """
    condition, scope_params = _scope_condition(user, alias="")
    sql, params = _CHAT_CONSULTATION_SQL + condition, [consultation_id, *scope_params]
    with connections[router.db_for_read(Consultation)].cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        raise NotFound("Consultation not found.")
    return ChatConsultation(*row)


def _aware(value: datetime | None) -> datetime | None:
    # PostgreSQL answers aware datetimes; SQLite naive ones, stored in UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# A history page as plain rows: id, sender, body, client id, three timestamps, and whether
# the message has files (so a page without any needs no attachment query).
_PAGE_SQL = (
    "SELECT m.id, m.sender_id, m.body, m.client_id, m.created_at, m.edited_at, m.deleted_at,"
    " EXISTS (SELECT 1 FROM attachments_attachment a WHERE a.message_id = m.id"
    " AND a.consultation_id = m.consultation_id AND a.deleted_at IS NULL)"
    " FROM messaging_message m WHERE m.consultation_id = %s{bounds}"
    " ORDER BY m.id {direction} LIMIT %s"
)


class MessageRow(NamedTuple):
    """One message as the history reads it (``messages_rows_page``)."""

    id: int
    sender_id: int
    body: str
    client_id: str
    created_at: datetime
    edited_at: datetime | None
    deleted_at: datetime | None
    has_attachments: bool


def messages_rows_page(
    *,
    consultation_id: int,
    limit: int,
    after: int | None = None,
    before: int | None = None,
) -> tuple[list[MessageRow], bool]:
    """:func:`messages_page` as plain rows, in one plain query (no model instances)."""
    bounds, params = "", [consultation_id]
    if after is not None:
        bounds += " AND m.id > %s"
        params.append(after)
    if before is not None:
        bounds += " AND m.id < %s"
        params.append(before)
    params.append(limit + 1)
    sql = _PAGE_SQL.format(bounds=bounds, direction="ASC" if after is not None else "DESC")
    with connections[router.db_for_read(Message)].cursor() as cursor:
        cursor.execute(sql, params)
        raw = cursor.fetchmany(limit + 1)
    more = len(raw) > limit
    rows = [
        MessageRow(
            pk, sender, body, client_id, _aware(created), _aware(edited), _aware(deleted), bool(f)
        )
        for pk, sender, body, client_id, created, edited, deleted, f in raw[:limit]
    ]
    if after is None:
        rows.reverse()
    return rows, more


# PostgreSQL: the consultation check and the page in one round trip. The page is a
# subquery on the requested id itself (not on c.id), so it is planned as the page alone:
# ORDER BY ... LIMIT on the (consultation, id) index, no sort of the chat (a plain join,
# or a correlated LATERAL, sorted every message of it). Joined to the visible consultation
# row: a visible consultation without messages is one row of NULLs, an invisible one none.
_HISTORY_SQL = (
    "SELECT c.id, c.patient_id, c.provider_id, c.organization_id, c.status, p.*"
    " FROM consultations_consultation c LEFT JOIN LATERAL ("
    " SELECT m.id, m.sender_id, m.body, m.client_id, m.created_at, m.edited_at, m.deleted_at,"
    " EXISTS (SELECT 1 FROM attachments_attachment a WHERE a.message_id = m.id"
    " AND a.consultation_id = m.consultation_id AND a.deleted_at IS NULL) AS has_files"
    " FROM messaging_message m WHERE m.consultation_id = %s{bounds}"
    " ORDER BY m.id {direction} LIMIT %s"
    ") p ON TRUE WHERE c.id = %s{scope} ORDER BY p.id {direction}"
)


def chat_history(
    *,
    user: User,
    consultation_id: int,
    limit: int,
    after: int | None = None,
    before: int | None = None,
) -> tuple[ChatConsultation, list[MessageRow], bool]:
    """:func:`chat_consultation` and :func:`messages_rows_page` together (NotFound when the
    user may not see the consultation): one statement on PostgreSQL, two elsewhere."""
    connection = connections[router.db_for_read(Message)]
    if connection.vendor != "postgresql":
        consultation = chat_consultation(user=user, consultation_id=consultation_id)
        page, more = messages_rows_page(
            consultation_id=consultation.pk, limit=limit, after=after, before=before
        )
        return consultation, page, more
    condition, scope_params = _scope_condition(user, alias="c.")
    bounds, params = "", [consultation_id]
    if after is not None:
        bounds += " AND m.id > %s"
        params.append(after)
    if before is not None:
        bounds += " AND m.id < %s"
        params.append(before)
    direction = "ASC" if after is not None else "DESC"
    sql = _HISTORY_SQL.format(bounds=bounds, direction=direction, scope=condition)
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, limit + 1, consultation_id, *scope_params])
        raw = cursor.fetchall()
    if not raw:
        raise NotFound("Consultation not found.")
    consultation = ChatConsultation(*raw[0][:5])
    more = len(raw) > limit
    rows = [
        MessageRow(
            pk, sender, body, client_id, _aware(created), _aware(edited), _aware(deleted), bool(f)
        )
        for pk, sender, body, client_id, created, edited, deleted, f in (
            row[5:] for row in raw[:limit]
        )
        if pk is not None
    ]
    if after is None:
        rows.reverse()
    return consultation, rows, more


def messages_page(
    *,
    consultation_id: int,
    limit: int,
    after: int | None = None,
    before: int | None = None,
) -> tuple[list[Message], bool]:
    """One page of a consultation's history, in id order, and whether more lie beyond it.

    With ``after``: the oldest ``limit`` messages with a greater id ("more" is newer ones).
    Without: the newest ``limit`` messages (below ``before`` if given; "more" is older ones).
    One query, whatever the limit.
    """
    queryset = Message.objects.filter(consultation_id=consultation_id)
    if after is not None:
        queryset = queryset.filter(id__gt=after)
    if before is not None:
        queryset = queryset.filter(id__lt=before)
    if after is not None:
        rows = list(queryset.order_by("id")[: limit + 1])
        return rows[:limit], len(rows) > limit
    rows = list(queryset.order_by("-id")[: limit + 1])
    page = rows[:limit]
    page.reverse()
    return page, len(rows) > limit


def message_for_client_id(*, sender_id: int, client_id: str) -> Message | None:
    """The message a sender already stored under this client_id, if any."""
    key = (
        MessageClientId.objects.filter(sender_id=sender_id, client_id=client_id)
        .values("message_id", "message_created_at")
        .first()
    )
    if key is None:
        return None
    # created_at lets PostgreSQL look in one partition only.
    return Message.objects.filter(
        id=key["message_id"], created_at=key["message_created_at"]
    ).first()


def message_exists(*, consultation_id: int, message_id: int) -> bool:
    return Message.objects.filter(consultation_id=consultation_id, id=message_id).exists()


# A message is written only after its consultation row exists (message_send inserts under
# that row's lock, stamped with the app's clock; fill_network writes its chats from the
# booking on). Said as a bound on the partition key, PostgreSQL skips per consultation, at
# run time, the monthly partitions older than it (each count probed all of them: 29 at
# size). A day's margin for app servers' clocks that disagree. SQLite has no partitions:
# no bound there. No upper bound: now() pruned no buffers, and the close is not one in
# filled data. The history page has none: with it the planner sorts the whole chat instead
# of walking the (consultation, id) index under its LIMIT.
_UNREAD_CREATED_BOUND = {"postgresql": " AND m.created_at >= c.created_at - interval '1 day'"}


# Unread counts as hand-written SQL: the ORM form (nested Subquery/OuterRef) cost a fifth to
# a third of the CPU of every endpoint showing a consultation, in resolving and copying its
# expressions (docs/performance.md). One scalar count per consultation, which walks the
# (consultation, id) index of each message partition from the user's marker on. Portable
# (PostgreSQL and SQLite); the table names are the models' own.
_UNREAD_SQL = (
    "SELECT c.id, ("
    " SELECT COUNT(*) FROM messaging_message m"
    " WHERE m.consultation_id = c.id{created} AND m.deleted_at IS NULL AND m.sender_id <> %s"
    " AND m.id > COALESCE(("
    "  SELECT r.last_read_message_id FROM messaging_readmarker r"
    "  WHERE r.consultation_id = c.id AND r.user_id = %s"
    " ), 0)"
    ") FROM consultations_consultation c WHERE c.id IN ({ids})"
)


def unread_counts_for(*, user: User, consultation_ids: Iterable[int]) -> dict[int, int]:
    """Unread messages per consultation for the user, in one query, from the read markers.

    Unread: not sent by the user, not deleted, with an id above the user's marker (no
    marker: everything). Counting starts at the marker, so the work is the unread messages'
    index entries, not the history's.
    """
    ids = sorted({int(pk) for pk in consultation_ids})
    if not ids:
        return {}
    # Only "%s" placeholders and a constant bound are formatted in; values go as parameters.
    connection = connections[router.db_for_read(Message)]
    sql = _UNREAD_SQL.format(
        created=_UNREAD_CREATED_BOUND.get(connection.vendor, ""),
        ids=", ".join(["%s"] * len(ids)),
    )
    counts = dict.fromkeys(ids, 0)
    with connection.cursor() as cursor:
        cursor.execute(sql, [user.pk, user.pk, *ids])
        counts.update({pk: int(n) for pk, n in cursor.fetchall()})
    return counts


def unread_count_for(*, user: User, consultation: Consultation) -> int:
    """Unread messages of one consultation for the user (one query)."""
    return unread_counts_for(user=user, consultation_ids=[consultation.pk]).get(consultation.pk, 0)


def chat_access(*, user_id: int, consultation_id: int) -> tuple[User, Consultation]:
    """(user, consultation) when the user may still see the chat, else NotFound.

    The check a socket made at connect, made again for every inbound event. The user is
    reloaded too: ``scope["user"]`` was resolved at connect, and a staff member moved to
    another clinic since must lose the chat now (revoked credentials close the socket
    through the user's group; this covers changes that revoke nothing).
    """
    user = User.objects.select_related("organization").filter(pk=user_id, is_active=True).first()
    if user is None:
        raise NotFound("Consultation not found.")
    return user, consultation_get_for_user(user=user, consultation_id=consultation_id)


class _Viewer(NamedTuple):
    """What ``clinic_scope`` reads of a user, from the access statement's columns."""

    pk: int
    role: str
    organization_id: int | None
    is_authenticated: bool = True


# chat_access's check as one plain statement: the user's current role and clinic (not the
# ones the socket connected with) and the consultation's chat columns.
_CHAT_ACCESS_SQL = (
    "SELECT u.role, u.organization_id, u.is_superuser,"
    " c.id, c.patient_id, c.provider_id, c.organization_id, c.status"
    " FROM accounts_user u LEFT JOIN consultations_consultation c ON c.id = %s"
    " WHERE u.id = %s AND u.is_active"
)


def chat_access_columns(*, user_id: int, consultation_id: int) -> ChatConsultation:
    """:func:`chat_access` for the websocket send: the same rule (an active user, the
    consultation visible to them as they are now), in one plain query, answering the
    consultation's chat columns. NotFound otherwise."""
    with connections[router.db_for_read(Consultation)].cursor() as cursor:
        cursor.execute(_CHAT_ACCESS_SQL, [consultation_id, user_id])
        row = cursor.fetchone()
    if row is None or row[3] is None:
        raise NotFound("Consultation not found.")
    role, organization_id, is_superuser, *columns = row
    consultation = ChatConsultation(*columns)
    if not is_superuser:
        scope = clinic_scope(_Viewer(user_id, role, organization_id))
        if scope is None or getattr(consultation, scope[0]) != scope[1]:
            raise NotFound("Consultation not found.")
    return consultation


def ticket_user(*, user_id: int, token_id: int | None) -> User | None:
    """The user a websocket ticket was issued to, if their credentials still hold.

    Read from the primary: a logout a moment ago must be seen. A ticket bound to a token
    dies with it (revoked, expired, or older than the user's last password change).
    """
    now = timezone.now()
    if token_id is None:
        return (
            User.objects.using(db_routing.PRIMARY)
            .filter(pk=user_id, is_active=True)
            .select_related("organization")
            .first()
        )
    token = (
        AuthToken.objects.using(db_routing.PRIMARY)
        .select_related("user", "user__organization")
        .filter(pk=token_id, user_id=user_id, revoked_at__isnull=True, expires_at__gt=now)
        .first()
    )
    if token is None or not token.user.is_active:
        return None
    if token.created_at < token.user.credentials_changed_at:
        return None
    return token.user
