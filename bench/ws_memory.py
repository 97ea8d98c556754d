#!/usr/bin/env python
"""Where an idle chat socket's bytes go (issue 12, memory per idle socket).

One MedEase server (the Procfile's web command, under ``tracemalloc``) on bench/ws_bench.py's
infrastructure (its own redis-server, a throwaway PostgreSQL database or SQLite). After one
warm-up socket and message, the server dumps a snapshot; then ``--sockets`` idle sockets
open (N/2 consultations x patient and provider, as the bench's idle scenario), settle, and
a second snapshot is taken. The difference, per socket, grouped by the line that allocated
(``--group lineno``) or by the allocation's call stack (``--group traceback``), says who
keeps what; RSS per socket is printed next to it (tracemalloc adds its own overhead to
RSS, so compare RSS figures from bench/ws_bench.py, not from here).

    .venv/bin/python bench/ws_memory.py --sockets 1000
    .venv/bin/python bench/ws_memory.py --sockets 1000 --group traceback --top 15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def serve(argv: list[str]) -> None:
    """The server side: uvicorn with a SIGUSR1 handler that dumps a snapshot."""
    out = Path(os.environ["WS_MEMORY_SNAPSHOTS"])
    count = {"n": 0}

    def dump(*_):
        import gc

        gc.collect()
        count["n"] += 1
        tracemalloc.take_snapshot().dump(str(out / f"{count['n']}.snapshot"))
        (out / f"{count['n']}.done").touch()

    signal.signal(signal.SIGUSR1, dump)
    import uvicorn.main

    sys.argv = ["uvicorn", *argv]
    uvicorn.main.main()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--group", choices=("lineno", "traceback", "filename"), default="lineno")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--frames", type=int, default=12, help="tracemalloc stack depth")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before the snapshot")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--target", choices=("medease", "relay"), default="medease",
        help="relay: the floor (bench/relay.py), to compare its figures with MedEase's",
    )  # fmt: skip
    args = parser.parse_args()

    from bench.ws_bench import APPS, Bench, raise_open_files, rss_kib, stop, wait_for
    from tests.procfile import procfile_web_command

    raise_open_files(args.sockets + 64)
    pairs = args.sockets // 2
    bench = Bench(SimpleNamespace(pairs=[pairs], two_node=[], idle=[], keep=args.keep))
    process = None
    try:
        bench.pin_self()
        bench.start_redis()
        bench.create_database()
        bench.setup_django()
        snapshots = bench.tmp / "snapshots"
        snapshots.mkdir()
        from bench.ws_bench import free_port

        port = free_port()
        command = procfile_web_command(port)
        command[command.index("config.asgi:application")] = APPS[args.target]
        command = [sys.executable, __file__, "--serve", *command[3:]]
        env = {
            **bench.env,
            "WS_MEMORY_SNAPSHOTS": str(snapshots),
            "PYTHONTRACEMALLOC": str(args.frames),
        }
        log = bench.tmp / "server.log"
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )

        def ready() -> bool:
            import urllib.request

            if process.poll() is not None:
                raise RuntimeError(f"server exited; see {log}")
            try:
                path = "/health/live" if args.target == "medease" else "/"
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(ready, timeout=180, what="server")
        from bench.ws_bench import Server

        server = Server.__new__(Server)  # started above, under tracemalloc
        server.port, server.target, server.process, server.log = port, args.target, process, log

        def snapshot(n: int) -> tracemalloc.Snapshot:
            process.send_signal(signal.SIGUSR1)
            wait_for(lambda: (snapshots / f"{n}.done").exists(), timeout=300, what="snapshot")
            return tracemalloc.Snapshot.load(str(snapshots / f"{n}.snapshot"))

        loop = bench.loop
        loop.run_until_complete(bench.warm(server, bench.consultations[0]))
        time.sleep(1.0)
        before = snapshot(1)
        rss_before = rss_kib(process.pid)
        rooms, roles = bench.pair_sockets(pairs)
        tickets = [None] * len(rooms)
        for role in ("patient", "provider"):
            indexes = [i for i, r in enumerate(roles) if r == role]
            for index, ticket in zip(
                indexes, bench.tickets(args.target, role, len(indexes)), strict=True
            ):
                tickets[index] = ticket
        sockets, readers = loop.run_until_complete(
            bench.open_sockets(server, rooms, tickets, lambda *a: None)
        )
        loop.run_until_complete(asyncio.sleep(args.settle))
        after = snapshot(2)
        rss_after = rss_kib(process.pid)
        loop.run_until_complete(bench.close_sockets(sockets, readers))

        n = len(rooms)
        filters = [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
        ]
        stats = after.filter_traces(filters).compare_to(before.filter_traces(filters), args.group)
        total = sum(stat.size_diff for stat in stats)
        print(
            f"{n} idle sockets: traced +{total / n / 1024:.2f} KiB/socket "
            f"({sum(stat.count_diff for stat in stats) / n:.1f} blocks/socket); "
            f"RSS +{(rss_after - rss_before) / n:.1f} KiB/socket (with tracemalloc's overhead)"
        )
        print(f"\ntop {args.top} by size, per socket (bytes, blocks):")
        for stat in stats[: args.top]:
            print(f"{stat.size_diff / n:9.0f} B {stat.count_diff / n:6.1f}  ", end="")
            if args.group == "traceback":
                print()
                for line in stat.traceback.format(limit=args.frames, most_recent_first=True):
                    print("        " + line)
            else:
                frame = stat.traceback[0]
                print(f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno}")
    finally:
        if process is not None:
            stop(process)
        with contextlib.suppress(Exception):
            bench.drop_database()
        stop(bench.redis)
        if not args.keep:
            import shutil

            shutil.rmtree(bench.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2:])
    else:
        sys.exit(main())
