#!/usr/bin/env python
"""Chat soak (issue 12, point 5): thousands of sockets for minutes, reconnecting, nothing lost.

One MedEase server process (the Procfile's web command, pinned to the first core like
bench/ws_bench.py, whose infrastructure this reuses: its own redis-server, a throwaway
PostgreSQL database or SQLite) holds ``--consultations`` x 2 sockets (patient and
provider) for ``--minutes``. Meanwhile:

* messages go over the websocket at a modest aggregate ``--rate``, round-robin over the
  consultations, from the patient and the provider in turn (from the other side when that
  socket is reconnecting);
* every minute (``--interval``) ``--reconnect`` of the sockets (10%), chosen at random and
  spread over the minute, close and reconnect with ``?after=<highest id that socket has
  seen>`` (docs/api.md; a fresh ticket each time), so whatever they missed comes back by
  replay, and send again what they sent without seeing it acknowledged (same
  ``client_id``: idempotent); a socket the server closes (e.g. 4408 after ``resync``)
  reconnects the same way and is reported;
* the server's RSS is sampled at the end of every interval.

At the end the sends stop, the sockets get ``--drain`` seconds to catch up, and the
database (the truth) is read: every stored message of a consultation must have been seen,
by id, by both of its sockets (live or through replay), and every send must be stored.
Pass/fail per check, missing ids listed; exit status 1 on any failure.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/ws_soak.py
    .venv/bin/python bench/ws_soak.py --consultations 100 --minutes 2 --interval 20   # short
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ws_bench import (  # noqa: E402
    CONNECT_CONCURRENCY,
    Bench,
    Server,
    cpu_seconds,
    raise_open_files,
    rss_kib,
    stop,
)

RSS_GROWTH_LIMIT = 0.10
RECONNECT_ATTEMPTS = 5


@dataclass
class Slot:
    """One participant's socket in one consultation, across its reconnects."""

    index: int
    room: int
    role: str
    ws: object = None
    open: bool = False
    seen: set[int] = field(default_factory=set)
    max_id: int = 0
    max_other: int = 0  # the highest id among messages sent by the other participant
    connects: int = 0
    server_closes: list = field(default_factory=list)  # close codes the server chose
    history: list = field(default_factory=list)  # (time, event): connects, closes, ids


@dataclass
class Report:
    sockets: int
    minutes: float
    sent: int = 0
    acked: int = 0
    skipped_sends: int = 0  # both sockets of the consultation were reconnecting
    resent: int = 0  # unacknowledged sends sent again after a reconnect
    reconnects: int = 0
    reconnect_failures: list = field(default_factory=list)
    handshake_seconds: list = field(default_factory=list)  # each reconnect's, ticket to open
    closed_at_end: int = 0  # sockets whose reconnect had not succeeded by the end
    server_closes: dict = field(default_factory=dict)
    resyncs: int = 0
    out_of_order: int = 0  # deliveries of an id below one the socket had already seen
    errors: dict = field(default_factory=dict)
    rss_kib: list = field(default_factory=list)
    cpu_share: list = field(default_factory=list)
    stored: int = 0
    missing: dict = field(default_factory=dict)  # "room/role" -> ids never seen
    lost_sends: list = field(default_factory=list)  # client_ids neither acked nor stored
    checks: list = field(default_factory=list)
    histories: dict = field(default_factory=dict)  # of the sockets that missed something


def missing_deliveries(slots: list[Slot], truth: dict[int, set[int]]) -> dict[str, list[int]]:
    """Per socket, the stored ids of its consultation it never saw (live or replayed)."""
    missing = {}
    for slot in slots:
        gap = truth.get(slot.room, set()) - slot.seen
        if gap:
            missing[f"{slot.room}/{slot.role}"] = sorted(gap)
    return missing


def rss_growth(samples: list[int]) -> float | None:
    """Growth of the highest later sample over the first interval's (the plateau)."""
    if len(samples) < 2:
        return None
    return max(samples[1:]) / samples[0] - 1


def evaluate(report: Report) -> list[dict]:
    checks = []

    def check(name: str, measured: str, ok: bool) -> None:
        checks.append({"check": name, "measured": measured, "pass": bool(ok)})

    missing = sum(len(ids) for ids in report.missing.values())
    check("every stored message seen by both sockets, by id", f"{missing} missing", not missing)
    check("every send stored", f"{len(report.lost_sends)} lost", not report.lost_sends)
    check("messages were sent and stored", f"{report.stored} stored", report.stored > 0)
    check("no error events", json.dumps(report.errors) or "{}", not report.errors)
    check(
        "reconnects succeed",
        f"{report.reconnects} done, {len(report.reconnect_failures)} failed, "
        f"{report.closed_at_end} sockets still closed at the end",
        not report.reconnect_failures and not report.closed_at_end,
    )
    unexplained = {code: n for code, n in report.server_closes.items() if code != "4408 server"}
    check(
        "no close we did not ask for, but 4408 (resync)",
        json.dumps(report.server_closes) or "{}",
        not unexplained,
    )
    growth = rss_growth(report.rss_kib)
    check(
        f"RSS growth < {RSS_GROWTH_LIMIT:.0%} over the first interval's",
        "n/a (one sample)" if growth is None else f"{growth:+.1%}",
        growth is not None and growth < RSS_GROWTH_LIMIT,
    )
    return checks


class Soak:
    def __init__(self, args) -> None:
        self.args = args
        self.bench = Bench(
            SimpleNamespace(
                pairs=[args.consultations], two_node=[], idle=[], fanout_sockets=[], keep=args.keep
            )
        )
        self.report = Report(sockets=2 * args.consultations, minutes=args.minutes)
        self.pending: dict[str, Slot] = {}  # client_id -> sender, until acknowledged
        self.sent: set[str] = set()
        self.stopping = False
        self.readers: set[asyncio.Task] = set()
        self.reconnecting: dict[int, asyncio.Task] = {}  # slot index -> its reconnect

    # --- Sockets --------------------------------------------------------------------------

    def ticket(self, slot: Slot) -> str:
        (ticket,) = self.bench.tickets("medease", slot.role, 1)
        return ticket

    async def connect(self, slot: Slot, *, after: int | None) -> None:
        from websockets.asyncio.client import connect

        query = f"?ticket={self.ticket(slot)}" + (f"&after={after}" if after is not None else "")
        url = f"ws://127.0.0.1:{self.server.port}/ws/consultations/{slot.room}/{query}"
        slot.history.append((round(time.perf_counter(), 3), f"connect after={after}"))
        # No client pings: browsers send none (the server's keepalive pings remain).
        slot.ws = await connect(url, open_timeout=120, max_size=2**20, ping_interval=None)
        slot.history.append((round(time.perf_counter(), 3), "open"))
        slot.open = True
        slot.connects += 1
        self.readers.add(reader := asyncio.ensure_future(self.read(slot, slot.ws)))
        reader.add_done_callback(self.readers.discard)

    async def read(self, slot: Slot, ws) -> None:
        with contextlib.suppress(Exception):
            async for frame in ws:
                self.on_frame(slot, json.loads(frame))
        if slot.ws is not ws:
            return  # an old connection of this slot: it was replaced
        slot.open = False
        slot.history.append((round(time.perf_counter(), 3), f"closed {ws.close_code}"))
        if not getattr(ws, "closed_by_us", False):
            # Who closed: the server (its close frame came) or the connection dropped.
            by_server = ws.protocol.close_rcvd is not None
            code = f"{ws.close_code} {'server' if by_server else 'no close frame'}"
            slot.server_closes.append(code)
            self.report.server_closes[code] = self.report.server_closes.get(code, 0) + 1
            if not self.stopping:
                self.start_reconnect(slot, close=False)

    def on_frame(self, slot: Slot, data: dict) -> None:
        kind = data.get("type")
        if kind == "message":
            message = data["message"]
            if message["id"] < slot.max_id and message["id"] not in slot.seen:
                self.report.out_of_order += 1
            slot.seen.add(message["id"])
            slot.history.append((round(time.perf_counter(), 3), message["id"]))
            if not str(message.get("client_id", "")).startswith(f"soak-{slot.index}-"):
                slot.max_other = max(slot.max_other, message["id"])
            slot.max_id = max(slot.max_id, message["id"])
            if self.pending.get(message.get("client_id")) is slot:
                del self.pending[message["client_id"]]
                self.report.acked += 1
        elif kind == "resync":
            self.report.resyncs += 1
        elif kind == "error":
            code = data.get("code", "?")
            self.report.errors[code] = self.report.errors.get(code, 0) + 1

    def start_reconnect(self, slot: Slot, *, close: bool = True) -> None:
        """One reconnect at a time per socket, never awaited by the loops that start them
        (a reconnect to an overloaded server can take minutes)."""
        if slot.index in self.reconnecting or self.stopping:
            return
        task = asyncio.ensure_future(self.reconnect(slot, close=close))
        self.reconnecting[slot.index] = task
        task.add_done_callback(lambda _: self.reconnecting.pop(slot.index, None))

    async def reconnect(self, slot: Slot, *, close: bool = True) -> None:
        if close and slot.ws is not None:
            slot.open = False
            slot.ws.closed_by_us = True
            slot.history.append((round(time.perf_counter(), 3), "closing"))
            with contextlib.suppress(Exception):
                await slot.ws.close()
        for attempt in range(RECONNECT_ATTEMPTS):
            try:
                # docs/api.md: reconnect with after=<last id seen>, the highest id this
                # socket has seen ("max"); "others" leaves out the socket's own echoes.
                after = slot.max_id if self.args.after == "max" else slot.max_other
                started = time.perf_counter()
                await self.connect(slot, after=after)
                self.report.handshake_seconds.append(round(time.perf_counter() - started, 4))
                self.report.reconnects += 1
                await self.resend(slot)
                return
            except Exception as exc:
                failure = f"{slot.room}/{slot.role}: {exc!r}"
                await asyncio.sleep(0.5 * (attempt + 1))
        self.report.reconnect_failures.append(failure)

    async def resend(self, slot: Slot) -> None:
        """Sends this socket never saw acknowledged go again, as a client does: the
        client_id makes a send idempotent (stored once, answered with the stored one)."""
        for client_id in [cid for cid, sender in self.pending.items() if sender is slot]:
            self.report.resent += 1
            with contextlib.suppress(Exception):
                await slot.ws.send(
                    json.dumps({"type": "message.send", "body": "x" * 120, "client_id": client_id})
                )

    # --- Load -----------------------------------------------------------------------------

    async def send_loop(self, slots: list[Slot], until: float) -> None:
        rate, count = self.args.rate, self.args.consultations
        begin, n = time.perf_counter(), 0
        while time.perf_counter() < until:
            delay = begin + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pair, side = n % count, (n // count) % 2
            n += 1
            sender = slots[2 * pair + side]
            if not sender.open:
                sender = slots[2 * pair + 1 - side]
            if not sender.open:
                self.report.skipped_sends += 1
                continue
            client_id = f"soak-{sender.index}-{n}-{secrets.token_hex(4)}"
            sender.history.append((round(time.perf_counter(), 3), f"send {client_id}"))
            self.pending[client_id] = sender
            self.sent.add(client_id)
            self.report.sent += 1
            with contextlib.suppress(Exception):
                await sender.ws.send(
                    json.dumps({"type": "message.send", "body": "x" * 120, "client_id": client_id})
                )

    async def churn_loop(self, slots: list[Slot], until: float) -> None:
        """Each interval, a share of the sockets reconnect, spread evenly over it (started
        on schedule, however long each reconnect takes)."""
        interval = self.args.interval
        while time.perf_counter() + interval <= until + 1:
            chosen = random.sample(slots, max(1, round(len(slots) * self.args.reconnect)))
            step = interval / len(chosen)
            for slot in chosen:
                await asyncio.sleep(step)
                if time.perf_counter() >= until:
                    break
                self.start_reconnect(slot)

    async def sample_loop(self, until: float) -> None:
        interval = self.args.interval
        cpu_before, at = cpu_seconds(self.server.pid), time.perf_counter()
        while time.perf_counter() + interval <= until + 1:
            await asyncio.sleep(interval)
            cpu_now, now = cpu_seconds(self.server.pid), time.perf_counter()
            self.report.rss_kib.append(rss_kib(self.server.pid))
            self.report.cpu_share.append(round((cpu_now - cpu_before) / (now - at), 3))
            cpu_before, at = cpu_now, now
            print(
                f"interval {len(self.report.rss_kib)}: RSS {self.report.rss_kib[-1]:,} KiB, "
                f"CPU {self.report.cpu_share[-1]:.0%} of a core, sent {self.report.sent}, "
                f"acked {self.report.acked}, reconnects {self.report.reconnects}, "
                f"server closes {self.report.server_closes}, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )

    async def soak(self) -> None:
        args = self.args
        slots = [
            Slot(index=2 * n + side, room=room, role=("patient", "provider")[side])
            for n, room in enumerate(self.bench.consultations[1 : args.consultations + 1])
            for side in (0, 1)
        ]
        started = time.perf_counter()
        limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def first(slot: Slot) -> None:
            async with limit:
                await self.connect(slot, after=None)

        await asyncio.wait_for(asyncio.gather(*(first(slot) for slot in slots)), 900)
        print(f"{len(slots)} sockets open in {time.perf_counter() - started:.0f} s", flush=True)
        await asyncio.sleep(2.0 + len(slots) / 1000)

        until = time.perf_counter() + args.minutes * 60
        await asyncio.gather(
            self.send_loop(slots, until), self.churn_loop(slots, until), self.sample_loop(until)
        )
        # Sends have stopped: let deliveries and replays finish, then read the truth.
        # A socket still closed gets another reconnect (with after=), within the drain.
        deadline = time.perf_counter() + args.drain
        while time.perf_counter() < deadline and (self.pending or not all(s.open for s in slots)):
            for slot in slots:
                if not slot.open:
                    self.start_reconnect(slot, close=False)
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)
        self.stopping = True
        for task in list(self.reconnecting.values()):
            task.cancel()
        self.report.closed_at_end = sum(1 for slot in slots if not slot.open)
        truth = await asyncio.to_thread(self.stored_ids, [s.room for s in slots])
        self.report.stored = sum(len(ids) for ids in truth.values())
        self.report.missing = missing_deliveries(slots, truth)
        self.report.histories = {
            f"{slot.room}/{slot.role}": slot.history
            for slot in slots
            if f"{slot.room}/{slot.role}" in self.report.missing
        }
        self.report.lost_sends = sorted(self.pending.keys() - self.stored_client_ids)
        for slot in slots:
            if slot.ws is not None:
                slot.ws.closed_by_us = True
        await asyncio.gather(
            *(slot.ws.close() for slot in slots if slot.ws is not None), return_exceptions=True
        )

    def stored_ids(self, rooms: list[int]) -> dict[int, set[int]]:
        from messaging.models import Message

        truth: dict[int, set[int]] = {}
        client_ids = set()
        rows = Message.objects.filter(consultation_id__in=set(rooms)).values_list(
            "consultation_id", "id", "client_id"
        )
        for room, message_id, client_id in rows.iterator():
            truth.setdefault(room, set()).add(message_id)
            client_ids.add(client_id)
        self.stored_client_ids = client_ids
        return truth

    def run(self) -> Report:
        bench = self.bench
        self.server = None
        try:
            server_cpu = bench.pin_self()
            bench.start_redis()
            bench.create_database()
            bench.setup_django()
            self.server = Server("medease", bench.env, bench.tmp / "medease.log", server_cpu)
            bench.loop.run_until_complete(self.soak())
        finally:
            if self.server is not None:
                stop(self.server.process)
            with contextlib.suppress(Exception):
                bench.drop_database()
            stop(bench.redis)
            if self.args.keep:
                print(f"kept {bench.tmp}", file=sys.stderr)
            else:
                import shutil

                shutil.rmtree(bench.tmp, ignore_errors=True)
        self.report.checks = evaluate(self.report)
        return self.report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consultations", type=int, default=2500, help="x 2 sockets")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per interval")
    parser.add_argument("--rate", type=float, default=25.0, help="aggregate messages/s")
    parser.add_argument("--reconnect", type=float, default=0.10, help="share per interval")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to catch up")
    parser.add_argument(
        "--after",
        choices=("max", "others"),
        default="max",
        help="reconnect after the highest id seen (docs/api.md), or the highest of the "
        "other participant's (own echoes left out)",
    )
    parser.add_argument("--json", help="write the report as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    # A terminated run still stops its servers and drops its database (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_open_files(2 * args.consultations + 64)

    load_before = os.getloadavg()
    report = Soak(args).run()
    print()
    print("| check | measured | |")
    print("|---|---|---|")
    for check in report.checks:
        verdict = "pass" if check["pass"] else "**FAIL**"
        print(f"| {check['check']} | {check['measured']} | {verdict} |")
    print(
        f"\n{report.sockets} sockets, {report.minutes:g} min, {report.sent} sent "
        f"({report.acked} acknowledged, {report.skipped_sends} skipped, {report.resent} resent "
        f"after a reconnect), {report.stored} "
        f"stored, {report.reconnects} reconnects, {report.resyncs} resync events, "
        f"{report.out_of_order} deliveries out of order; RSS KiB per "
        f"interval {report.rss_kib}; CPU share per interval {report.cpu_share}; load average "
        f"{' '.join(f'{n:.2f}' for n in load_before)} before, "
        f"{' '.join(f'{n:.2f}' for n in os.getloadavg())} after"
    )
    shakes = sorted(report.handshake_seconds)
    if shakes:
        at = lambda p: shakes[min(len(shakes) - 1, round(p / 100 * (len(shakes) - 1)))]  # noqa: E731
        print(
            f"reconnect handshakes (ticket to open, replay not included): p50 {at(50) * 1000:.0f} "
            f"ms, p99 {at(99) * 1000:.0f} ms, max {shakes[-1] * 1000:.0f} ms"
        )
    for key, ids in list(report.missing.items())[:50]:
        print(f"missing {key}: {ids}")
    if report.lost_sends:
        print(f"lost sends: {report.lost_sends[:50]}")
    if args.json:
        Path(args.json).write_text(json.dumps(report.__dict__, indent=2, default=str))
    ok = all(check["pass"] for check in report.checks)
    print("SOAK PASSED" if ok else "SOAK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
