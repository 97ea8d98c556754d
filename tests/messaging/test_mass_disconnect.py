"""Hundreds of sockets closing at once: no Redis pool errors, presence ends right (issue 12).

One real node (the Procfile's web command) whose channel layer may use only a few Redis
connections. Its sockets share one pub/sub subscription per group (messaging.hub) and
presence removals go out in batches, so the burst of disconnects neither fails with
MaxConnectionsError nor leaves presence or subscriptions behind.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
from websockets.asyncio.client import connect as ws_connect

from accounts import services as account_services
from messaging import events, hub, presence, services
from tests.messaging.test_cross_node import START_TIMEOUT, Node, RedisServer, stop_process
from tests.messaging.test_cross_node import wait_until as wait_until_sync
from tests.messaging.test_slow_reader import node_env

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

SOCKETS = 400
POOL = 8


@pytest.fixture
def node(transactional_db, tmp_path):
    layer = RedisServer(tmp_path)
    layer.start()
    server = Node(
        env=node_env(tmp_path, layer, CHANNEL_LAYER_MAX_CONNECTIONS=str(POOL), LOG_LEVEL="INFO"),
        log=tmp_path / "node.log",
    )
    try:
        wait_until_sync(server.ready, timeout=START_TIMEOUT, what="the node")
        yield server, layer
    finally:
        server.stop()
        stop_process(layer.process)


async def wait_until(predicate, *, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(predicate):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_hundreds_of_sockets_closing_at_once(node, chat):
    server, layer = node
    cid = chat.consultation.pk

    def tickets(count: int = SOCKETS):
        _raw, patient_token = account_services.token_issue(user=chat.patient)
        _raw, provider_token = account_services.token_issue(user=chat.provider)
        return [
            services.ws_ticket_issue(
                user=user, token=patient_token if user == chat.patient else provider_token
            )
            for n in range(count)
            for user in [chat.patient if n % 2 else chat.provider]
        ]

    url = f"{server.ws}/ws/consultations/{cid}/?ticket="
    limit = asyncio.Semaphore(50)

    async def open_one(ticket: str):
        async with limit:
            return await ws_connect(url + ticket, open_timeout=60)

    sockets = await asyncio.gather(*(open_one(t) for t in await asyncio.to_thread(tickets)))
    online = presence.backend()
    await wait_until(
        lambda: online.online_users(consultation_id=cid) == {chat.patient.pk, chat.provider.pk},
        timeout=30,
        what="both participants online",
    )
    layer_redis = redis.Redis.from_url(layer.url)
    channel = hub.channel_of(events.consultation_group(cid))

    def subscribers() -> int:
        return dict(layer_redis.pubsub_numsub(channel))[channel.encode()]

    assert subscribers() == 1  # one subscription for the process, whatever its sockets

    # All at once: the clients drop their TCP connections without a closing handshake.
    for ws in sockets:
        ws.transport.abort()

    await wait_until(lambda: subscribers() == 0, timeout=60, what="the node to unsubscribe")
    await wait_until(
        lambda: online.online_users(consultation_id=cid) == set(),
        timeout=30,
        what="presence to be empty",
    )
    log = server.log.read_text()
    for symptom in ("MaxConnectionsError", "Too many connections", "failed", "Traceback"):
        assert symptom not in log, log[-3000:]
    # A socket opened afterwards sees nobody else online.
    (ticket,) = await asyncio.to_thread(tickets, 1)
    async with ws_connect(url + ticket) as ws:
        await asyncio.sleep(1.0)
        frames = []
        while True:
            try:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
            except TimeoutError:
                break
        assert [f for f in frames if f["type"] == "presence"] == []
