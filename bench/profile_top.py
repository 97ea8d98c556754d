#!/usr/bin/env python
"""Where a py-spy profile's samples go: shares by cost centre and the top frames.

Reads py-spy's collapsed stacks (``py-spy record --format raw``, which
``bench/http_floor.py --profile`` writes: one ``frame;frame;...;leaf count`` line per
distinct stack, root first). A sample counts towards every cost centre one of its frames
matches (they nest: the audit INSERT is inside the view), so the shares do not add up to
100%; each says how much less CPU the endpoint would use if that work cost nothing.

    .venv/bin/python bench/profile_top.py var/bench-profile/consultations.txt [...]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (cost centre, regular expression searched in each frame "function (file:line)"). py-spy
# names library files relative to site-packages ("(redis/client.py:1)").
COST_CENTRES = [
    ("audit: build + INSERT of audit rows", r"audit_log_rows|audit_chat_read|^audit_"),
    ("authentication (bearer token, whole)", r"authenticate \(accounts/authentication"),
    ("  token lookup (cache, then database)", r"token_lookup"),
    ("  user row for the token", r"token_user \("),
    ("  token idle-expiry touch", r"token_touch"),
    ("throttle / rate limits", r"\(medease/ratelimit\.py"),
    ("unread counts", r"unread_count"),
    ("cursor pagination", r"\(medease/pagination\.py"),
    ("query tracking (X-DB-Selects diagnostics)", r"\(medease/db/tracking\.py"),
    ("Prometheus middleware (own work)", r"\(prometheus_client/"),
    ("DRF serializers (to_representation)", r"\(rest_framework/(serializers|fields)\.py"),
    ("JSON rendering", r"\(rest_framework/renderers\.py|\(json/"),
    ("transaction commit", r"^commit \(|\.commit \("),
    ("logging", r"\(logging/"),
]

# Layers, innermost first: each sample goes to the first layer whose pattern matches the
# frame nearest to the leaf, so these shares partition the samples (they add up to 100%).
LAYERS = [
    ("PostgreSQL driver (psycopg, psycopg_pool)", r"\(psycopg(_pool)?/"),
    ("Redis client (redis-py)", r"\(redis/"),
    ("Django ORM (query building, SQL compilation, rows to objects)", r"\(django/db/"),
    ("DRF (views, serializers, rendering)", r"\(rest_framework/"),
    (
        "project code (accounts, consultations, messaging, medease)",
        r"\((accounts|consultations|messaging|medease|config)/",
    ),
    ("Django (handlers, middleware, urls, http, utils)", r"\(django/"),
    ("asgiref sync/async hand-offs, threads", r"\(asgiref/|\(threading\.py|\(concurrent/"),
    ("uvicorn, asyncio, httptools", r"\(uvicorn/|\(asyncio/|\(httptools/|\(uvloop/"),
]


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _layer(frames: list[str], patterns) -> str:
    for frame in reversed(frames):
        for name, pattern in patterns:
            if pattern.search(frame):
                return name
    return "other (interpreter, standard library)"


def report(path: Path, top: int) -> str:
    stacks = load(path)
    total = sum(count for _, count in stacks) or 1
    centres: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    patterns = [(name, re.compile(regex)) for name, regex in COST_CENTRES]
    for frames, count in stacks:
        for name, pattern in patterns:
            if any(pattern.search(frame) for frame in frames):
                centres[name] += count
        for frame in set(frames):
            inclusive[frame] += count
        leaf[frames[-1]] += count
    layers: Counter[str] = Counter()
    layer_patterns = [(name, re.compile(regex)) for name, regex in LAYERS]
    for frames, count in stacks:
        layers[_layer(frames, layer_patterns)] += count
    lines = [f"## {path.stem}: {total} samples", "", "| cost centre | share |", "|---|---|"]
    lines += [f"| {name} | {centres[name] * 100 / total:.1f}% |" for name, _ in COST_CENTRES]
    lines += ["", "| layer (innermost frame) | share |", "|---|---|"]
    lines += [f"| {name} | {count * 100 / total:.1f}% |" for name, count in layers.most_common()]
    own = [(f, c) for f, c in inclusive.most_common() if not f.startswith(("process ", "thread "))]
    project = [
        (f, c) for f, c in own if re.search(r"\((accounts|consultations|messaging|medease)/", f)
    ]
    lines += ["", "Top project frames (inclusive):", ""]
    lines += [f"- {c * 100 / total:5.1f}% {f}" for f, c in project[:top]]
    lines += ["", "Top leaf frames (self):", ""]
    lines += [f"- {c * 100 / total:5.1f}% {f}" for f, c in leaf.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print("\n\n".join(report(path, args.top) for path in args.profiles))


if __name__ == "__main__":
    main()
