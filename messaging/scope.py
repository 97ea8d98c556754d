"""A request-like view of a websocket scope, for code written against Django requests
(rate-limit keys, the audit log's client address)."""

from __future__ import annotations

# The headers a socket still reads once it is open: its client's address, for audit events
# and rate limits (medease.ratelimit.client_ip).
CLIENT_ADDRESS_HEADERS = frozenset({b"x-forwarded-for"})


def keep_client_address_headers(scope: dict) -> None:
    """Drop from the scope the headers only the handshake reads (origin, cookie, request id,
    the websocket ones): the server's scope lives as long as the socket, and so would they
    (about 1 KiB per idle socket)."""
    scope["headers"] = tuple(
        (name, value)
        for name, value in scope.get("headers", ())
        if name.lower() in CLIENT_ADDRESS_HEADERS
    )


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
