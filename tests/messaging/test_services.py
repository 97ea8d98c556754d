"""The send service, read markers, unread counts and offline notifications."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Role
from consultations.models import Consultation, ConsultationStatus
from medease.exceptions import Conflict, Forbidden, InvalidInput
from messaging import events, hub, presence, selectors, services
from messaging.models import Message, MessageClientId, ReadMarker
from tests.messaging.conftest import REAL_NOTIFY_UNREAD, make_consultation

pytestmark = pytest.mark.django_db


def send(chat, sender=None, body="Hello", client_id="c-1"):
    return services.message_send(
        consultation=chat.consultation,
        sender=sender or chat.patient,
        body=body,
        client_id=client_id,
    )


def test_send_stores_once_per_client_id(chat):
    message, created = send(chat, body="Hello doctor")
    again, created_again = send(chat, body="Hello doctor")
    assert created is True and created_again is False
    assert again.pk == message.pk
    assert Message.objects.count() == 1
    assert MessageClientId.objects.get().message_id == message.pk
    assert (message.consultation_id, message.sender_id, message.body, message.client_id) == (
        chat.consultation.pk,
        chat.patient.pk,
        "Hello doctor",
        "c-1",
    )


def test_client_ids_are_per_sender(chat):
    first, _ = send(chat, sender=chat.patient, client_id="same")
    second, created = send(chat, sender=chat.provider, client_id="same")
    assert created and first.pk != second.pk


def test_client_id_reused_in_another_consultation_is_a_conflict(chat):
    send(chat, client_id="k")
    other = make_consultation(patient=chat.patient, provider=chat.provider, hours=5)
    with pytest.raises(Conflict) as exc:
        services.message_send(consultation=other, sender=chat.patient, body="x", client_id="k")
    assert exc.value.code == "client_id_reused"


def test_ids_increase(chat):
    ids = [send(chat, client_id=f"c{n}")[0].pk for n in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_staff_observe_but_do_not_send(chat):
    with pytest.raises(Forbidden):
        send(chat, sender=chat.staff)


@pytest.mark.parametrize(
    "status",
    [ConsultationStatus.COMPLETED, ConsultationStatus.CANCELLED, ConsultationStatus.NO_SHOW],
)
def test_closed_consultation_is_read_only(chat, status):
    earlier, _ = send(chat, client_id="before-close")
    Consultation.objects.filter(pk=chat.consultation.pk).update(status=status)
    with pytest.raises(Conflict) as exc:
        send(chat, client_id="after-close")
    assert exc.value.status_code == 409 and exc.value.code == "consultation_closed"
    # A retry of a send that succeeded before the close still gets its message.
    again, created = send(chat, client_id="before-close")
    assert (again.pk, created) == (earlier.pk, False)


@pytest.mark.parametrize(
    ("body", "client_id"),
    [
        ("", "c"),
        ("   \n ", "c"),
        ("x" * 10_001, "c"),
        ("nul \x00 inside", "c"),
        (123, "c"),
        ("ok", ""),
        ("ok", "x" * 65),
        ("ok", " padded "),
        ("ok", "tab\tinside"),
        ("ok", None),
    ],
)
def test_bad_input_is_refused(chat, body, client_id):
    with pytest.raises(InvalidInput):
        send(chat, body=body, client_id=client_id)
    assert Message.objects.count() == 0


def test_longest_body_is_accepted(chat):
    message, _ = send(chat, body="é" * 10_000)
    assert len(message.body) == 10_000


def test_read_marker_only_moves_forward(chat):
    m1, _ = send(chat, sender=chat.provider, client_id="1")
    m2, _ = send(chat, sender=chat.provider, client_id="2")
    kwargs = {"consultation": chat.consultation, "user": chat.patient}
    assert services.read_marker_advance(message_id=m2.pk, **kwargs) is True
    assert services.read_marker_advance(message_id=m1.pk, **kwargs) is False
    assert services.read_marker_advance(message_id=m2.pk, **kwargs) is False
    marker = ReadMarker.objects.get(consultation=chat.consultation, user=chat.patient)
    assert marker.last_read_message_id == m2.pk


def test_read_marker_refuses_foreign_message(chat):
    other = make_consultation(patient=chat.patient, provider=chat.provider, hours=5)
    foreign, _ = services.message_send(
        consultation=other, sender=chat.provider, body="x", client_id="f"
    )
    with pytest.raises(InvalidInput):
        services.read_marker_advance(
            consultation=chat.consultation, user=chat.patient, message_id=foreign.pk
        )


def test_sending_marks_everything_before_it_read_for_the_sender(chat):
    send(chat, sender=chat.provider, client_id="q1")
    send(chat, sender=chat.provider, client_id="q2")
    assert selectors.unread_count_for(user=chat.patient, consultation=chat.consultation) == 2
    reply, _ = send(chat, sender=chat.patient, client_id="a1")
    assert selectors.unread_count_for(user=chat.patient, consultation=chat.consultation) == 0
    assert selectors.unread_count_for(user=chat.provider, consultation=chat.consultation) == 1
    marker = ReadMarker.objects.get(consultation=chat.consultation, user=chat.patient)
    assert marker.last_read_message_id == reply.pk


def test_unread_counts_come_from_the_marker_in_one_query(chat, make_user, organization):
    second = make_consultation(patient=chat.patient, provider=chat.provider, hours=5)
    third = make_consultation(patient=chat.patient, provider=chat.provider, hours=9)
    for n in range(3):
        send(chat, sender=chat.provider, client_id=f"a{n}")
    m, _ = services.message_send(
        consultation=second, sender=chat.provider, body="x", client_id="b0"
    )
    services.message_send(consultation=second, sender=chat.provider, body="y", client_id="b1")
    services.read_marker_advance(consultation=second, user=chat.patient, message_id=m.pk)
    # Deleted messages do not count.
    Message.objects.filter(client_id="a2").update(deleted_at=timezone.now())
    ids = [chat.consultation.pk, second.pk, third.pk]
    with CaptureQueriesContext(connection) as queries:
        counts = selectors.unread_counts_for(user=chat.patient, consultation_ids=ids)
    assert len(queries) == 1
    assert counts == {chat.consultation.pk: 2, second.pk: 1, third.pk: 0}
    assert selectors.unread_counts_for(user=chat.patient, consultation_ids=[]) == {}


def test_consultation_selectors_use_the_chat_counts(chat):
    from consultations import selectors as consultation_selectors

    send(chat, sender=chat.provider, client_id="q")
    assert (
        consultation_selectors.unread_count_for(user=chat.patient, consultation=chat.consultation)
        == 1
    )
    assert consultation_selectors.unread_counts_for(
        user=chat.patient, consultation_ids=[chat.consultation.pk]
    ) == {chat.consultation.pk: 1}


# --- Fan-out ---------------------------------------------------------------------------


def test_fan_out_happens_after_commit(chat, monkeypatch, django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(events, "group_send", lambda group, event: sent.append((group, event)))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        message, _ = send(chat)
        assert sent == []  # nothing before commit
    assert len(callbacks) == 1
    group, event = sent[0]
    assert group == f"consultation.{chat.consultation.pk}"
    assert event["type"] == "chat.message"
    assert event["message"]["id"] == message.pk
    assert event["message"]["client_id"] == "c-1"
    assert isinstance(event["message"]["created_at"], str)  # plain JSON types only


def test_repeat_fans_out_nothing(chat, django_capture_on_commit_callbacks):
    send(chat)
    with django_capture_on_commit_callbacks() as callbacks:
        send(chat)
    assert callbacks == []


def test_channel_layer_failure_does_not_fail_the_send(
    chat, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    def broken(group, event):
        raise ConnectionError("Redis down")

    # Consultation events go out through the chat hub (messaging.hub).
    monkeypatch.setattr(hub, "publish", broken)
    with (
        caplog.at_level(logging.WARNING, logger="medease.messaging"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        message, created = send(chat)
    assert created and Message.objects.filter(pk=message.pk).exists()
    assert "fan-out of chat.message" in caplog.text


def test_rolled_back_send_fans_out_nothing(chat, monkeypatch, django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(events, "group_send", lambda group, event: sent.append(event))

    def boom(**kwargs):
        raise RuntimeError("notification outbox failed")

    monkeypatch.setattr(services.notifications, "notify_unread_messages", boom)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
        send(chat)
    assert sent == [] and Message.objects.count() == 0


# --- Offline notifications -------------------------------------------------------------


def test_offline_participant_is_notified_once_per_idle_period(chat, notified, settings):
    for n in range(3):
        send(chat, sender=chat.provider, client_id=f"m{n}")
    assert notified == [(chat.patient.pk, chat.consultation.pk)]

    # Reading starts a new idle period: the next message notifies again, once.
    last = Message.objects.order_by("-id").first()
    services.read_marker_advance(
        consultation=chat.consultation, user=chat.patient, message_id=last.pk
    )
    send(chat, sender=chat.provider, client_id="m3")
    send(chat, sender=chat.provider, client_id="m4")
    assert len(notified) == 2

    # Without reading, a new period starts MESSAGING_OFFLINE_NOTIFY_SECONDS later.
    ReadMarker.objects.filter(user=chat.patient).update(
        notified_at=timezone.now()
        - timedelta(seconds=settings.MESSAGING_OFFLINE_NOTIFY_SECONDS + 1)
    )
    send(chat, sender=chat.provider, client_id="m5")
    assert len(notified) == 3


def test_online_participant_is_not_notified(chat, notified):
    presence.backend().join(
        consultation_id=chat.consultation.pk, user_id=chat.patient.pk, connection="tab-1"
    )
    send(chat, sender=chat.provider)
    assert notified == []
    # The sender is never notified of their own message; the provider is offline here.
    send(chat, sender=chat.patient, client_id="reply")
    assert notified == [(chat.provider.pk, chat.consultation.pk)]


def test_presence_unknown_counts_as_offline(chat, notified, monkeypatch):
    monkeypatch.setattr(presence, "backend", lambda: (_ for _ in ()).throw(ConnectionError()))
    send(chat, sender=chat.provider)
    assert notified == [(chat.patient.pk, chat.consultation.pk)]


def test_real_outbox_row_is_written(chat, monkeypatch):
    """Against the notification outbox itself (workers), not the recorder."""
    from workers.models import Notification

    monkeypatch.setattr(services.notifications, "notify_unread_messages", REAL_NOTIFY_UNREAD)
    send(chat, sender=chat.provider, client_id="q1")
    send(chat, sender=chat.provider, client_id="q2")
    rows = Notification.objects.filter(user=chat.patient, kind="unread_messages")
    assert rows.count() == 1
    assert rows.get().consultation_id == chat.consultation.pk


# --- Presence (the in-memory store here; Redis in test_consumers under REDIS_URL) -------


def test_presence_counts_tabs_and_expiry(chat, settings):
    store = presence.backend()
    cid, uid = chat.consultation.pk, chat.patient.pk
    assert store.join(consultation_id=cid, user_id=uid, connection="a") is True
    assert store.join(consultation_id=cid, user_id=uid, connection="b") is False
    assert store.online_users(consultation_id=cid) == {uid}
    assert store.leave(consultation_id=cid, user_id=uid, connection="a") is False
    assert store.leave(consultation_id=cid, user_id=uid, connection="b") is True
    assert store.leave(consultation_id=cid, user_id=uid, connection="b") is False
    assert store.online_users(consultation_id=cid) == set()


def test_presence_of_a_dead_node_expires(chat, settings, time_machine):
    store = presence.backend()
    cid = chat.consultation.pk
    time_machine.move_to(timezone.now(), tick=False)
    store.join(consultation_id=cid, user_id=chat.patient.pk, connection="dead-node")
    store.join(consultation_id=cid, user_id=chat.provider.pk, connection="alive")
    time_machine.shift(settings.MESSAGING_PRESENCE_TTL_SECONDS + 1)
    back, gone = store.heartbeat(consultation_id=cid, user_id=chat.provider.pk, connection="alive")
    # The first heartbeat after the gap prunes the dead entry and announces its user gone;
    # the provider's own late entry is renewed (nobody announced them gone: no "back").
    assert (back, gone) == (False, [chat.patient.pk])
    assert store.online_users(consultation_id=cid) == {chat.provider.pk}
    # Not dead after all, only late: the patient's next heartbeat brings them back.
    back, gone = store.heartbeat(
        consultation_id=cid, user_id=chat.patient.pk, connection="dead-node"
    )
    assert (back, gone) == (True, [])
    assert store.online_users(consultation_id=cid) == {chat.provider.pk, chat.patient.pk}


def test_patients_cannot_be_made_participants_of_others(chat, make_user):
    stranger = make_user(Role.PATIENT)
    with pytest.raises(Forbidden):
        services.message_send(
            consultation=chat.consultation, sender=stranger, body="hi", client_id="s"
        )
