"""Chat writes: sending (one path for REST and websocket), read markers, tickets, closing
sockets on revocation, partition upkeep. Fan-out happens after commit, never inside."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta

import psycopg
from django.conf import settings
from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from accounts.models import User
from attachments import services as attachment_services
from consultations.models import Consultation, clinic_scope_sql
from medease.audit import AuditAction
from medease.exceptions import Conflict, Forbidden, InvalidInput, NotFound
from messaging import (
    events,
    hub,
    lanes,
    notifications,
    partitions,
    permissions,
    presence,
    selectors,
    tickets,
)
from messaging.audit import MESSAGE_AUDIT_TYPE
from messaging.models import (
    MAX_BODY_LENGTH,
    MAX_CLIENT_ID_LENGTH,
    Message,
    ReadMarker,
)
from messaging.serializers import message_json, message_payload

logger = logging.getLogger("medease.messaging")


# --- Input rules (one place for REST and websocket) ----------------------------------------


def _clean_body(body: object) -> str:
    if not isinstance(body, str):
        raise InvalidInput("body must be text.", fields={"body": ["Must be a string."]})
    if not body.strip():
        raise InvalidInput("The message is empty.", fields={"body": ["May not be blank."]})
    if len(body) > MAX_BODY_LENGTH:
        raise InvalidInput(
            f"The message is longer than {MAX_BODY_LENGTH} characters.",
            fields={"body": [f"At most {MAX_BODY_LENGTH} characters."]},
        )
    # PostgreSQL text cannot hold NUL: refuse it here instead of failing in the database.
    if "\x00" in body:
        raise InvalidInput("The message contains a NUL character.", fields={"body": ["Invalid."]})
    return body


def _clean_client_id(client_id: object) -> str:
    if (
        not isinstance(client_id, str)
        or not 1 <= len(client_id) <= MAX_CLIENT_ID_LENGTH
        or not client_id.isprintable()
        or client_id != client_id.strip()
    ):
        raise InvalidInput(
            f"client_id must be 1 to {MAX_CLIENT_ID_LENGTH} printable characters.",
            fields={"client_id": ["Invalid."]},
        )
    return client_id


# --- Sending -------------------------------------------------------------------------------


def _repeat(existing: Message, *, consultation: Consultation) -> tuple[Message, bool]:
    if existing.consultation_id != consultation.pk:
        raise Conflict(
            "This client_id was already used for a message in another consultation.",
            code="client_id_reused",
            fields={"client_id": ["Already used."]},
        )
    return existing, False


def message_send(
    *,
    consultation: Consultation,
    sender: User,
    body: str,
    client_id: str,
    attachment_ids: Sequence[int] = (),
    on_stored: Callable[[Message], None] | None = None,
) -> tuple[Message, bool]:
    """Store a message once per (sender, client_id), then fan it out after commit.

    Returns ``(message, created)``; a repeated client_id returns the stored message with
    ``created=False`` (also once the consultation has closed: the first send succeeded),
    with the attachments the first send linked (the repeat's ``attachment_ids`` are not
    looked at). ``attachment_ids``: the sender's own ready files of this consultation, each
    linked once (anything else is a 400 on ``attachments``). The caller has found
    ``consultation`` through ``consultation_get_for_user`` (or
    ``selectors.chat_consultation``). ``on_stored(message)`` runs in the send's
    transaction once the message is stored (not for a repeat): its audit event commits
    with it, in the same INSERT round trip as the rest, or not at all.
    """
    body = _clean_body(body)
    client_id = _clean_client_id(client_id)
    if not permissions.is_participant(user=sender, consultation=consultation):
        raise Forbidden(
            "Only the consultation's patient and provider send messages.", code="not_participant"
        )
    for attempt in (1, 2):
        try:
            return _store(
                consultation=consultation,
                sender=sender,
                body=body,
                client_id=client_id,
                attachment_ids=attachment_ids,
                on_stored=on_stored,
            )
        except IntegrityError as exc:
            if attempt == 1 and partitions.is_missing_partition(exc):
                # The beat job that keeps partitions ahead has not run for months: make the
                # partition now rather than refuse a clinical message, then try once more.
                logger.error("no message partition for now; creating it inline: %s", exc)
                partitions.ensure_partitions(months_ahead=1)
                continue
            # A concurrent send with the same client_id committed first: answer with it.
            existing = selectors.message_for_client_id(sender_id=sender.pk, client_id=client_id)
            if existing is None:
                raise
            return _repeat(existing, consultation=consultation)
    raise AssertionError("unreachable")  # pragma: no cover


def _lock_sql(connection) -> str:
    # FOR NO KEY UPDATE of the consultation only (the client-id side may be NULL); SQLite
    # has no row locks: its one writer at a time serializes sends anyway.
    if not connection.features.has_select_for_update:
        return ""
    if connection.features.has_select_for_no_key_update:
        return " FOR NO KEY UPDATE OF c"
    return " FOR UPDATE OF c"  # pragma: no cover - no such backend configured


# The send's statements as plain SQL: through the ORM (two creates, get_or_create and
# conditional updates, each compiled per call) they were most of chat send's own CPU.
_LOCK_SQL = (
    "SELECT c.status, k.message_id, k.message_created_at FROM consultations_consultation c"
    " LEFT JOIN messaging_messageclientid k ON k.sender_id = %s AND k.client_id = %s"
    " WHERE c.id = %s"
)
_MESSAGE_SQL = (
    "INSERT INTO messaging_message (consultation_id, sender_id, body, client_id, created_at)"
    " VALUES (%s, %s, %s, %s, %s) RETURNING id"
)
_CLIENT_ID_SQL = (
    "INSERT INTO messaging_messageclientid (sender_id, client_id, message_id,"
    " message_created_at) VALUES (%s, %s, %s, %s)"
)
# The sender's marker moves to their own message (never back), created if missing.
_SENDER_MARKER_SQL = (
    "INSERT INTO messaging_readmarker (consultation_id, user_id, last_read_message_id,"
    " read_at) VALUES (%s, %s, %s, %s) ON CONFLICT (consultation_id, user_id) DO UPDATE"
    " SET last_read_message_id = excluded.last_read_message_id, read_at = excluded.read_at"
    " WHERE messaging_readmarker.last_read_message_id < excluded.last_read_message_id"
)
# An offline recipient's notification period, claimed (see _notify_offline_participants):
# a new marker, or one whose last notice is old or older than their last read. Returns
# the recipient when claimed.
_CLAIM_SQL = (
    "INSERT INTO messaging_readmarker (consultation_id, user_id, last_read_message_id,"
    " notified_at) VALUES (%s, %s, 0, %s) ON CONFLICT (consultation_id, user_id) DO UPDATE"
    " SET notified_at = excluded.notified_at"
    " WHERE messaging_readmarker.notified_at IS NULL"
    " OR messaging_readmarker.notified_at < %s"
    " OR messaging_readmarker.notified_at < messaging_readmarker.read_at"
    " RETURNING user_id"
)


# A send of the usual kind as one statement in autocommit: what chat_access_columns,
# message_send and the create event do in ~8 round trips (access check, BEGIN, lock,
# inserts, marker, audit INSERT, COMMIT), for a send with no attachments to a consultation
# whose other participant is online. It checks the sender (active, seeing the consultation
# by clinic_scope's rule as they are now, a participant), that the consultation is open
# and that the other participant is the one the caller found online, takes the same row
# lock (so ids commit in id order), and stores the message, its client_id, the sender's
# read marker and the audit event together. When anything is otherwise (no access, closed,
# a repeated client_id, another participant) it stores nothing, and message_send's full
# path, which knows every answer, decides. Text parameters are cast: on a prepared
# statement PostgreSQL must deduce one type for each, wherever it is used.
_OPEN_STATUSES_SQL = ", ".join(f"'{status}'" for status in sorted(permissions.OPEN_STATUSES))
_AT_ONCE_SQL = f"""
WITH chat AS (
    SELECT c.id, c.patient_id, c.organization_id
    FROM consultations_consultation c JOIN accounts_user u ON u.id = %(sender)s
    WHERE c.id = %(consultation)s AND u.is_active AND c.status IN ({_OPEN_STATUSES_SQL})
        AND {clinic_scope_sql(user="u", row="c")}
        AND (c.patient_id = u.id OR c.patient_id = %(peer)s::bigint)
        AND (c.provider_id = u.id OR c.provider_id = %(peer)s::bigint OR c.provider_id IS NULL)
        AND u.id IN (c.patient_id, c.provider_id)
    FOR NO KEY UPDATE OF c
), message AS (
    INSERT INTO messaging_message (consultation_id, sender_id, body, client_id, created_at)
    SELECT id, %(sender)s, %(body)s::text, %(client_id)s::varchar, %(now)s FROM chat
    WHERE NOT EXISTS (
        SELECT FROM messaging_messageclientid
        WHERE sender_id = %(sender)s AND client_id = %(client_id)s::varchar
    )
    RETURNING id
), client_id AS (
    INSERT INTO messaging_messageclientid (sender_id, client_id, message_id, message_created_at)
    SELECT %(sender)s, %(client_id)s::varchar, id, %(now)s FROM message
), marker AS (
    INSERT INTO messaging_readmarker (consultation_id, user_id, last_read_message_id, read_at)
    SELECT %(consultation)s, %(sender)s, id, %(now)s FROM message
    ON CONFLICT (consultation_id, user_id) DO UPDATE
    SET last_read_message_id = excluded.last_read_message_id, read_at = excluded.read_at
    WHERE messaging_readmarker.last_read_message_id < excluded.last_read_message_id
), audit AS (
    INSERT INTO medease_auditevent (created_at, user_id, ip, action, object_type, object_id,
        patient_id, organization_id, request_id, event_id)
    SELECT %(now)s, %(audit_user)s, %(audit_ip)s::inet, %(audit_action)s::varchar,
        %(audit_type)s::varchar, message.id::text, chat.patient_id, chat.organization_id,
        %(request_id)s::varchar, gen_random_uuid()
    FROM message, chat
)
SELECT id FROM message
"""  # noqa: S608 - only this code's constants are formatted in


async def amessage_send_at_once(
    *, sender_id: int, consultation_id: int, peer_id: int | None, body: str, client_id: str,
    audit_origin: tuple[int | None, str | None, str],
) -> dict | None:  # fmt: skip
    """Store and fan out a websocket send in one statement (_AT_ONCE_SQL) on the
    consultation's lane (messaging.lanes): the message's payload, or None when it stored
    nothing and message_send's full path must answer.

    ``peer_id``: the consultation's other participant as the socket knows it (None when
    there is none); only a peer online now (a socket here, else presence in Redis) lets
    the send skip the full path, which notifies an offline one in the send's transaction.
    ``audit_origin``: messaging.audit.message_created_origin of the request. The caller
    has counted the send against its rate limit. PostgreSQL only (lanes.available()).
    """
    body = _clean_body(body)
    client_id = _clean_client_id(client_id)
    if peer_id is not None and not await _aonline(consultation_id, peer_id):
        return None
    now = timezone.now()
    audit_user, audit_ip, request_id = audit_origin
    params = {
        "sender": sender_id,
        "consultation": consultation_id,
        "peer": peer_id,
        "body": body,
        "client_id": client_id,
        "now": now,
        "audit_user": audit_user,
        "audit_ip": audit_ip,
        "audit_action": AuditAction.CREATE.value,
        "audit_type": MESSAGE_AUDIT_TYPE,
        "request_id": request_id,
    }
    try:
        async with lanes.lane(consultation_id) as connection:
            cursor = await connection.execute(_AT_ONCE_SQL, params)
            row = await cursor.fetchone()
            if row is None:
                return None
            payload = message_json(
                id=row[0], consultation_id=consultation_id, sender_id=sender_id, body=body,
                client_id=client_id, created_at=now, edited_at=None, deleted_at=None,
                attachments=[],
            )  # fmt: skip
            # Published before the lane is let go: the consultation's next send is
            # published after this one, as its id is higher.
            await events.agroup_send(
                events.consultation_group(consultation_id), events.message_event(payload)
            )
            return payload
    except (psycopg.IntegrityError, psycopg.OperationalError) as exc:
        # A concurrent send with this client_id committed first, no partition exists for
        # now, or the connection broke: nothing was stored, and the full path handles each.
        logger.info("one-statement send fell back to the full path: %r", exc)
        return None


async def _aonline(consultation_id: int, user_id: int) -> bool:
    if hub.locally_present(consultation_id, user_id):
        return True
    try:
        return await presence.ais_online(consultation_id=consultation_id, user_id=user_id)
    except Exception as exc:  # Redis down: the full path counts them offline
        logger.warning("presence unavailable: %s", exc)
        return False


def _store(
    *,
    consultation: Consultation,
    sender: User,
    body: str,
    client_id: str,
    attachment_ids: Sequence[int],
    on_stored: Callable[[Message], None] | None,
) -> tuple[Message, bool]:
    """The transaction of message_send (IntegrityError: a concurrent repeat won)."""
    using = router.db_for_write(Message)
    connection = connections[using]
    ops = connection.ops
    with transaction.atomic(using=using), connection.cursor() as cursor:
        # Lock the consultation row (FOR NO KEY UPDATE, compatible with the inserts'
        # foreign-key checks). It serializes this consultation's sends, so message ids
        # commit in id order and "replay after id N" can never miss a smaller id that
        # commits later; and it waits for a concurrent complete/cancel, so the status
        # read here is the one that holds at commit. The same statement looks the
        # client_id up (after the lock: a repeat that committed meanwhile is seen).
        cursor.execute(_LOCK_SQL + _lock_sql(connection), [sender.pk, client_id, consultation.pk])
        row = cursor.fetchone()
        if row is None:
            raise NotFound("Consultation not found.")
        status, existing_id, existing_created_at = row
        if existing_id is not None:
            existing = (
                Message.objects.using(using)
                .filter(id=existing_id, created_at=existing_created_at)
                .first()
            )
            if existing is not None:
                return _repeat(existing, consultation=consultation)
        if not permissions.is_open(status):
            raise Conflict(
                f"This consultation is {status.replace('_', ' ')}; its chat is read-only.",
                code="consultation_closed",
            )
        now = timezone.now()
        db_now = ops.adapt_datetimefield_value(now)
        cursor.execute(_MESSAGE_SQL, [consultation.pk, sender.pk, body, client_id, db_now])
        (message_id,) = cursor.fetchone()
        # The unique (sender, client_id) constraint is what makes a concurrent repeat in
        # another consultation (not serialized by the lock above) fail here.
        cursor.execute(_CLIENT_ID_SQL, [sender.pk, client_id, message_id, db_now])
        message = Message(
            id=message_id,
            consultation_id=consultation.pk,
            sender_id=sender.pk,
            body=body,
            client_id=client_id,
            created_at=now,
        )
        message._state.adding, message._state.db = False, using
        # A file that cannot be attached refuses the whole send (rolled back, nothing sent).
        attachments = attachment_services.attachments_link_to_message(
            uploader=sender,
            consultation_id=consultation.pk,
            message_id=message.pk,
            message_created_at=now,
            attachment_ids=attachment_ids,
        )
        # Whoever writes has read everything up to their own message.
        cursor.execute(_SENDER_MARKER_SQL, [consultation.pk, sender.pk, message.pk, db_now])
        _notify_offline_participants(
            cursor, consultation=consultation, sender=sender, now=now, db_now=db_now
        )
        if on_stored is not None:
            on_stored(message)
        events.group_send_on_commit(
            events.consultation_group(consultation.pk),
            events.message_event(message_payload(message, attachments)),
        )
    return message, True


def _notify_offline_participants(
    cursor, *, consultation: Consultation, sender: User, now, db_now
) -> None:
    """Outbox rows for participants with no open socket here, one per idle period.

    Runs in the send's transaction, so a rolled-back send notifies nobody. The period is
    claimed with a conditional upsert of the recipient's read marker (the database decides
    between concurrent sends): a notification is due if none was sent yet, or the last one
    is older than MESSAGING_OFFLINE_NOTIFY_SECONDS, or the user has read the chat since.
    When presence cannot be read (Redis down) everyone counts as offline: one extra email
    per period beats a clinical message nobody notices.
    """
    recipient_ids = [
        user_id
        for user_id in (consultation.patient_id, consultation.provider_id)
        if user_id is not None and user_id != sender.pk
    ]
    if not recipient_ids:
        return
    # A recipient with a socket in this process is online without asking Redis (one round
    # trip fewer, inside the row lock, for the usual chat of two connected people).
    if all(hub.locally_present(consultation.pk, user_id) for user_id in recipient_ids):
        return
    online = presence.online_users(consultation_id=consultation.pk) or set()
    period_start = now - timedelta(seconds=settings.MESSAGING_OFFLINE_NOTIFY_SECONDS)
    db_period_start = cursor.db.ops.adapt_datetimefield_value(period_start)
    for recipient_id in recipient_ids:
        if recipient_id in online:
            continue
        cursor.execute(_CLAIM_SQL, [consultation.pk, recipient_id, db_now, db_period_start])
        if cursor.fetchone() is None:
            continue
        # Claimed (once per idle period, so rarely): the notification names both people.
        if not isinstance(consultation, Consultation) or not _participants_loaded(consultation):
            consultation = Consultation.objects.select_related("patient", "provider").get(
                pk=consultation.pk
            )
        recipient = (
            consultation.patient
            if recipient_id == consultation.patient_id
            else consultation.provider
        )
        notifications.notify_unread_messages(user=recipient, consultation=consultation)


def _participants_loaded(consultation: Consultation) -> bool:
    state = consultation._state.fields_cache
    return "patient" in state and "provider" in state


# --- Read markers --------------------------------------------------------------------------


def _marker_advance(*, consultation_id: int, user_id: int, upto: int) -> bool:
    """Move a marker forward to ``upto``; never back. True when it moved.

    A conditional UPDATE (``last_read_message_id < upto``) decides between concurrent reads
    from two tabs: the higher one wins whatever the order.
    """
    now = timezone.now()

    def advance() -> int:
        return ReadMarker.objects.filter(
            consultation_id=consultation_id, user_id=user_id, last_read_message_id__lt=upto
        ).update(last_read_message_id=upto, read_at=now)

    if advance():
        return True
    _, created = ReadMarker.objects.get_or_create(
        consultation_id=consultation_id,
        user_id=user_id,
        defaults={"last_read_message_id": upto, "read_at": now},
    )
    # Not created: the marker was already at or past upto, or a concurrent first read made
    # it between our UPDATE and get_or_create; one more conditional UPDATE settles it.
    return created or bool(advance())


def read_marker_advance(*, consultation: Consultation, user: User, message_id: int) -> bool:
    """Mark the consultation read up to ``message_id`` for the user; True when it moved.

    Anyone who may see the consultation keeps a marker (staff have unread counts too). A
    marker that moved is announced to the consultation's sockets after commit.
    """
    if not selectors.message_exists(consultation_id=consultation.pk, message_id=message_id):
        raise InvalidInput(
            "No such message in this consultation.",
            fields={"message_id": ["Not a message of this consultation."]},
        )
    with transaction.atomic():
        moved = _marker_advance(consultation_id=consultation.pk, user_id=user.pk, upto=message_id)
        if moved:
            events.group_send_on_commit(
                events.consultation_group(consultation.pk),
                events.read_event(user_id=user.pk, message_id=message_id),
            )
    return moved


# --- Websocket tickets and revocation ------------------------------------------------------


def ws_ticket_issue(*, user: User, token=None, consultation_id: int | None = None) -> str:
    """A single-use websocket ticket for the user (bound to the token that asked for it and,
    when given, to one consultation: any other socket with it closes 4403)."""
    return tickets.ticket_store(
        user_id=user.pk, token_id=getattr(token, "pk", None), consultation_id=consultation_id
    )


def user_sockets_close(*, user_id: int) -> None:
    """Close every open chat socket of the user, on every node (credentials revoked).

    Channels resolves ``scope["user"]`` once, at connect; without this a logged-out user's
    sockets would keep streaming. Registered with accounts.services.on_credentials_revoked,
    which calls it after commit.
    """
    events.group_send(events.user_group(user_id), events.revoked_event())


# --- Partitions ----------------------------------------------------------------------------


def message_partitions_ensure(*, months_ahead: int | None = None) -> list[str]:
    """Create missing monthly message partitions (PostgreSQL); returns the ones created."""
    created = partitions.ensure_partitions(
        months_ahead=months_ahead or settings.MESSAGING_PARTITION_MONTHS_AHEAD
    )
    if created:
        logger.info("created message partitions: %s", ", ".join(created))
    return created
