"""The chat hub (messaging.hub): one subscription per group per process, never a silent gap.

Pub/sub is at-most-once: what is published while the hub's connection is down is gone. So
when that connection breaks, every socket it served gets ``resync`` (the last id it
delivered) and close 4408, and a reconnect with ``?after=`` replays what it missed.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
from channels.db import database_sync_to_async
from django.conf import settings

from messaging import consumers, events, hub, services
from messaging.models import Message
from tests.messaging.conftest import issue_ticket, ws_path

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def db(func):
    return database_sync_to_async(func)


async def open_chat(sockets, chat, user, *, after=None):
    ticket = await db(issue_ticket)(user)
    return await sockets(ws_path(chat.consultation.pk, ticket=ticket, after=after))


def layer_redis() -> redis.Redis:
    return redis.Redis.from_url(settings.CHANNEL_LAYER_REDIS_URL)


def subscribers(channel: str) -> int:
    return dict(layer_redis().pubsub_numsub(channel))[channel.encode()]


async def send(socket, body: str, client_id: str) -> dict:
    await socket.send({"type": "message.send", "body": body, "client_id": client_id})
    return (await socket.receive_type("message"))["message"]


async def test_sockets_of_a_process_share_one_subscription_per_group(chat, sockets):
    channel = hub.channel_of(events.consultation_group(chat.consultation.pk))
    first = await open_chat(sockets, chat, chat.patient)
    second = await open_chat(sockets, chat, chat.provider)
    assert subscribers(channel) == 1
    await first.close()
    assert subscribers(channel) == 1
    await second.close()
    for _ in range(50):  # the unsubscribe goes out after the last socket left
        if subscribers(channel) == 0:
            break
        await asyncio.sleep(0.05)
    assert subscribers(channel) == 0


async def test_a_lost_subscription_tells_each_socket_to_resync(chat, sockets):
    patient = await open_chat(sockets, chat, chat.patient)
    provider = await open_chat(sockets, chat, chat.provider)
    first = await send(provider, "before", "k-1")
    assert (await patient.receive_type("message"))["message"]["id"] == first["id"]

    # The hub's pub/sub connection is cut (a Redis failover, a proxy timing it out).
    killed = layer_redis().client_kill_filter(_type="pubsub")
    assert killed >= 1
    # A message stored meanwhile may or may not have reached the sockets live...
    during = await db(
        lambda: (
            services.message_send(
                consultation=chat.consultation,
                sender=chat.provider,
                body="during",
                client_id="k-2",
            )[0].pk
        )
    )()

    # ...so each socket is told where to resume, then closed with 4408.
    resync = await patient.receive_type("resync")
    assert resync["after"] in (first["id"], during)
    assert await patient.closed_with() == 4408
    # (A sender's own acknowledgements do not move its resync point: an earlier message
    # of someone else's may still be on its way.)
    assert (await provider.receive_type("resync"))["after"] is None
    assert await provider.closed_with() == 4408

    # The replay after that id has everything; live delivery works again.
    again = await open_chat(sockets, chat, chat.patient, after=first["id"])
    assert (await again.receive_type("message"))["message"]["id"] == during
    other = await open_chat(sockets, chat, chat.provider)
    latest = await send(other, "after", "k-3")
    assert (await again.receive_type("message"))["message"]["id"] == latest["id"]
    assert await db(lambda: Message.objects.filter(consultation=chat.consultation).count())() == 3


async def test_a_socket_that_stops_reading_falls_behind_with_an_exact_prefix(chat, sockets):
    """The in-process version of tests/messaging/test_slow_reader.py: once the transport's
    send waits (a full buffer), frames wait in a bounded backlog; past it the socket gets
    an exact prefix, then resync with that prefix's last id, then 4408."""
    patient = await open_chat(sockets, chat, chat.patient)
    await patient.settle()
    # The test transport's buffer holds one frame: further sends wait until it is read.
    queue = patient.communicator.output_queue
    queue._maxsize = 1

    def flood() -> list[int]:
        return [
            services.message_send(
                consultation=chat.consultation,
                sender=chat.provider,
                body=f"m{n}",
                client_id=f"s-{n}",
            )[0].pk
            for n in range(consumers.BACKLOG_FRAMES + 10)
        ]

    sent = await db(flood)()
    await asyncio.sleep(0.5)  # the fan-out of the last ones reaches the hub
    queue._maxsize = 0

    delivered, resyncs = [], []
    while True:
        output = await patient.communicator.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            break
        event = json.loads(output["text"])
        if event["type"] == "message":
            delivered.append(event["message"]["id"])
        elif event["type"] == "resync":
            resyncs.append(event)
    assert output.get("code") == 4408
    assert 0 < len(delivered) < len(sent)
    assert delivered == sent[: len(delivered)]
    assert resyncs == [{"type": "resync", "after": delivered[-1]}]

    # A reconnect with that id replays exactly the rest.
    again = await open_chat(sockets, chat, chat.patient, after=delivered[-1])
    replayed = [
        (await again.receive_type("message"))["message"]["id"]
        for _ in range(len(sent) - len(delivered))
    ]
    assert delivered + replayed == sent


async def test_one_heartbeat_renews_many_entries_and_reports_dead_nodes():
    """A process renews all its (consultation, user) entries with one script per batch;
    answers are :meth:`RedisPresence.heartbeat`'s: back, and users whose node died."""
    from django_redis import get_redis_connection

    from messaging import presence

    client = get_redis_connection("default")
    now = time.time()
    key = presence._KEY.format(consultation_id=901)
    # User 7's only entry belongs to a node that stopped renewing it.
    client.zadd(key, {"7|node:dead": now - 5})
    client.zadd(key, {"8|node:us": now + 30})
    keys = [(901, 8), (902, 9)]  # 9's entry in 902 is missing: pruned meanwhile
    answers = await presence.aheartbeat_many(keys, connection="node:us")
    assert answers == [(False, [7]), (True, [])]
    assert await presence.aonline_users(consultation_id=901) == {8}
    assert await presence.aonline_users(consultation_id=902) == {9}
    # Renewed: both entries now expire a TTL from now.
    for consultation_id, user_id in keys:
        zset = presence._KEY.format(consultation_id=consultation_id)
        score = client.zscore(zset, f"{user_id}|node:us")
        assert score > now + settings.MESSAGING_PRESENCE_TTL_SECONDS - 5


async def test_a_send_sees_a_recipient_online_on_any_node_until_its_entry_expires():
    """``ais_online`` (the send's check, over the loop's Redis line) reads the same entries
    as the handshake's ``aonline_users``: another node's live entry counts, an expired one
    does not, and user 1 is not user 12."""
    from django_redis import get_redis_connection

    from messaging import presence

    client = get_redis_connection("default")
    now = time.time()
    key = presence._KEY.format(consultation_id=903)
    client.zadd(key, {"12|node:other": now + 30, "5|node:dead": now - 5})
    assert await presence.ais_online(consultation_id=903, user_id=12)
    assert not await presence.ais_online(consultation_id=903, user_id=1)
    assert not await presence.ais_online(consultation_id=903, user_id=5)
    assert await presence.aonline_users(consultation_id=903) == {12}


async def test_without_a_layer_redis_the_hub_delivers_in_process(settings):
    """The embedded mode (one process, no Redis): publishers on any thread reach the
    sockets of the process's event loops directly."""
    settings.CHANNEL_LAYER_REDIS_URL = ""
    pushed = []

    class Socket:
        user_id = 3

        def hub_push(self, kind, ident, frame):
            pushed.append((kind, ident, frame["text"]))

        def hub_lost(self, code):  # nothing to lose in process
            raise AssertionError(code)

    local = hub.Hub()
    hub._hubs[asyncio.get_running_loop()] = local
    socket = Socket()
    await local.join("consultation.77", socket)
    event = {"type": "chat.message", "message": {"id": 12, "body": "hi"}}
    await asyncio.to_thread(hub.publish, "consultation.77", event)  # a service's thread
    await hub.apublish("consultation.77", {"type": "chat.typing", "user": 4})
    for _ in range(100):
        if len(pushed) == 2:
            break
        await asyncio.sleep(0.01)
    assert pushed == [
        (hub.MESSAGE, 12, '{"type":"message","message":{"id":12,"body":"hi"}}'),
        (hub.EXCEPT, 4, '{"type":"typing","user":4}'),
    ]
    local.leave("consultation.77", socket)
    assert local.rooms == {}
