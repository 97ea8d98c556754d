"""Per-request state kept in context variables (safe under threads and asyncio)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field


@dataclass
class RequestState:
    """What the current request has done so far, for logging and database routing."""

    request_id: str = "-"
    # Reads go to the primary once this is set: the request wrote, or the user wrote
    # moments ago, or the code asked for the primary explicitly.
    use_primary: bool = False
    wrote: bool = False
    extra: dict = field(default_factory=dict)


_state: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar(
    "medease_request_state", default=None
)


def current_state() -> RequestState | None:
    return _state.get()


def begin(state: RequestState) -> contextvars.Token:
    return _state.set(state)


def end(token: contextvars.Token) -> None:
    _state.reset(token)


def current_request_id() -> str:
    state = _state.get()
    return state.request_id if state else "-"
