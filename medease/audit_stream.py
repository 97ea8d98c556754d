"""The audit log's durable queue: a Redis Stream between requests and PostgreSQL.

A request appends its events with one XADD before its response is sent
(``stream_append``); ``manage.py audit_flush`` reads them through a consumer group and
inserts them in batches (``Flusher``). Each event carries the ``event_id`` the request
made, so a batch inserted again after a crash, or an event the request also wrote
synchronously after an ambiguous timeout, is stored once (``ON CONFLICT DO NOTHING``).
An entry is acknowledged and deleted only after its rows are committed. See
docs/adr/0007-audit-write-path.md.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime

import orjson
import redis
from django.conf import settings
from django.db import DataError, IntegrityError, close_old_connections, transaction

from medease.cache import CircuitBreakerRedis
from medease.models import AuditEvent

logger = logging.getLogger("medease.audit")

GROUP = "audit-flush"
FIELD = "events"  # one stream entry holds the events of one audit_log call, as JSON
_FIELDS = (
    "event_id",
    "created_at",
    "user_id",
    "ip",
    "action",
    "object_type",
    "object_id",
    "patient_id",
    "organization_id",
    "request_id",
)
_FIELD_SET = frozenset(_FIELDS)

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def _request_client() -> redis.Redis:
    """The web side's client: short timeouts, and the cache's circuit breaker per server."""
    url = settings.AUDIT_REDIS_URL
    client = _clients.get(url)
    if client is None:
        with _clients_lock:
            client = _clients.get(url)
            if client is None:
                timeout = settings.AUDIT_STREAM_SOCKET_TIMEOUT
                client = CircuitBreakerRedis.from_url(
                    url, socket_timeout=timeout, socket_connect_timeout=timeout
                )
                _clients[url] = client
    return client


def values_encode(values: dict) -> dict:
    """The JSON-ready form of an event's column values (times in ISO 8601)."""
    data = {name: values.get(name) for name in _FIELDS}
    data["event_id"] = str(values["event_id"])
    data["created_at"] = values["created_at"].isoformat()
    return data


def event_encode(event: AuditEvent) -> dict:
    """The JSON-ready form of an unsaved event (every column, times in ISO 8601)."""
    return values_encode({name: getattr(event, name) for name in _FIELDS})


def event_decode(data: dict) -> AuditEvent:
    """An unsaved AuditEvent from ``event_encode``'s output."""
    values = {name: data.get(name) for name in _FIELDS}
    values["event_id"] = uuid.UUID(values["event_id"])
    values["created_at"] = datetime.fromisoformat(values["created_at"])
    values["request_id"] = values["request_id"] or ""
    return AuditEvent(**values)


def stream_append(events: list[AuditEvent]) -> None:
    """Append events to the stream in one XADD; raises ``redis.RedisError`` on failure."""
    stream_append_values([{name: getattr(event, name) for name in _FIELDS} for event in events])


def stream_append_values(events: list[dict]) -> None:
    """``stream_append`` for events given as column values (``event_id`` and
    ``created_at`` set)."""
    try:
        # orjson writes a UUID as str() and a datetime as isoformat() do, so an event of
        # exactly the columns needs no values_encode() copy (a list page has 20 of them).
        payload = orjson.dumps(
            [values if values.keys() == _FIELD_SET else values_encode(values) for values in events]
        )
    except orjson.JSONEncodeError:  # beyond orjson (an integer over 64 bits, a lone surrogate)
        payload = json.dumps([values_encode(values) for values in events], separators=(",", ":"))
    _request_client().xadd(settings.AUDIT_STREAM_KEY, {FIELD: payload})


def default_consumer_name() -> str:
    """This host's name: a restarted flusher picks up what it had read and not written."""
    return os.environ.get("AUDIT_FLUSH_CONSUMER") or socket.gethostname()


def _insert(events: list[AuditEvent]) -> int:
    with transaction.atomic():
        AuditEvent.objects.bulk_create(events, ignore_conflicts=True)
    return len(events)


class Flusher:
    """Moves stream entries into PostgreSQL: read, INSERT (idempotent), then XACK + XDEL."""

    def __init__(self, *, consumer: str, client: redis.Redis | None = None) -> None:
        block_seconds = settings.AUDIT_FLUSH_BLOCK_MS / 1000
        self.client = client or redis.Redis.from_url(
            settings.AUDIT_REDIS_URL,
            socket_timeout=block_seconds + 5,  # a blocked XREADGROUP is not a dead socket
            socket_connect_timeout=5,
        )
        self.key = settings.AUDIT_STREAM_KEY
        self.consumer = consumer
        self.batch = settings.AUDIT_FLUSH_BATCH
        self.block_ms = settings.AUDIT_FLUSH_BLOCK_MS
        self.claim_idle_ms = int(settings.AUDIT_FLUSH_CLAIM_IDLE_SECONDS * 1000)
        self.linger = settings.AUDIT_FLUSH_LINGER_MS / 1000
        self._next_claim = 0.0
        self._group_ready = False
        # Whether this consumer may hold entries it read and did not acknowledge: at start
        # (a previous run under this name died) and after a failed write. Otherwise the
        # read of its own pending entries is skipped, a round trip less per batch.
        self._own_pending = True

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From the start of the stream: entries appended before any flusher ran count.
            self.client.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _read(self, *, block: bool) -> list[tuple[bytes, dict | None]]:
        self._ensure_group()
        # What this consumer read before and did not acknowledge (a failed INSERT, or a
        # previous run under the same name that died) comes first.
        if self._own_pending:
            own = self.client.xreadgroup(GROUP, self.consumer, {self.key: "0"}, count=self.batch)
            entries = own[0][1] if own else []
            if entries:
                return entries  # the next read looks again, until none is left
            self._own_pending = False
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self.claim_idle_ms / 1000 / 2
            # Entries a dead consumer (another host, or a renamed one) left pending.
            _next, claimed, _deleted = self.client.xautoclaim(
                self.key, GROUP, self.consumer, self.claim_idle_ms, "0-0", count=self.batch
            )
            if claimed:
                return claimed
        new = self.client.xreadgroup(
            GROUP,
            self.consumer,
            {self.key: ">"},
            count=self.batch,
            block=self.block_ms if block else None,
        )
        return new[0][1] if new else []

    def _write(self, entries: list[tuple[bytes, dict | None]]) -> int:
        decoded, bad = [], []
        for entry_id, fields in entries:
            if fields is None:  # deleted after it was read: its events are in already
                continue
            try:
                items = json.loads(fields[FIELD.encode()])
                decoded.append((entry_id, fields, [event_decode(item) for item in items]))
            except (TypeError, KeyError, ValueError) as exc:
                logger.error("audit stream entry %r unreadable, set aside: %s", entry_id, exc)
                bad.append(fields)
        close_old_connections()  # a connection broken by a database outage is replaced
        try:
            written = _insert([event for _id, _fields, events in decoded for event in events])
        except (DataError, IntegrityError):
            # One event the table refuses (too long, a missing column) must not hold up
            # the stream: write entry by entry and set aside the ones refused.
            written = 0
            for entry_id, fields, events in decoded:
                try:
                    written += _insert(events)
                except (DataError, IntegrityError) as exc:
                    logger.error("audit stream entry %r refused, set aside: %s", entry_id, exc)
                    bad.append(fields)
        ids = [entry_id for entry_id, _fields in entries]
        pipe = self.client.pipeline(transaction=True)
        for fields in bad:
            # Kept for a person to read rather than retried for ever or dropped.
            pipe.xadd(f"{self.key}:unreadable", fields or {"missing": "1"})
        pipe.xack(self.key, GROUP, *ids)
        pipe.xdel(self.key, *ids)
        pipe.execute()
        return written

    def flush_once(self, *, block: bool = True) -> tuple[int, int]:
        """Read one batch and write it; returns (entries, events) handled."""
        entries = self._read(block=block)
        if not entries:
            return 0, 0
        try:
            return len(entries), self._write(entries)
        except BaseException:
            self._own_pending = True  # read, not acknowledged: re-read them first
            raise

    def drain(self) -> int:
        """Flush until nothing is left to read now (``audit_flush --once``); events written."""
        total = 0
        self._next_claim = 0.0
        self._own_pending = True
        while True:
            entries, written = self.flush_once(block=False)
            if not entries:
                return total
            total += written

    def run(self, stop: threading.Event) -> None:
        """Flush until ``stop`` is set; a failing Redis or database is retried with back-off."""
        delay = 0.5
        while not stop.is_set():
            try:
                entries, _written = self.flush_once()
                delay = 0.5
                if 0 < entries < self.batch and self.linger:
                    # A short batch: let the next one gather for a moment rather than pay
                    # a read, a transaction and an acknowledgement per event or two (the
                    # events are durable in the stream already; only the table waits).
                    stop.wait(self.linger)
            except (redis.RedisError, OSError) as exc:
                logger.warning("audit flush: Redis unavailable, retrying in %.1fs: %s", delay, exc)
                self._group_ready = False
                self._own_pending = True
                stop.wait(delay)
                delay = min(delay * 2, 10.0)
            except Exception as exc:  # the database: entries stay pending and are retried
                logger.warning("audit flush: write failed, retrying in %.1fs: %s", delay, exc)
                stop.wait(delay)
                delay = min(delay * 2, 10.0)
