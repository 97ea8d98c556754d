"""A request-like view of a websocket scope, for code written against Django requests
(rate-limit keys, the audit log's client address)."""

from __future__ import annotations


class ScopeRequest:
    """Just what medease.ratelimit and medease.audit read: ``user``, ``META``, ``method``."""

    method = "WEBSOCKET"

    def __init__(self, scope: dict, user=None) -> None:
        self.user = user if user is not None else scope.get("user")
        meta: dict[str, str] = {}
        client = scope.get("client")
        if client:
            meta["REMOTE_ADDR"] = client[0]
        for name, value in scope.get("headers", []):
            key = name.decode("latin-1").upper().replace("-", "_")
            meta[f"HTTP_{key}"] = value.decode("latin-1")
        self.META = meta
