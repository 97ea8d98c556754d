"""Websocket routes (docs/api.md, "Websocket")."""

from django.urls import path

from messaging.consumers import ConsultationChatConsumer

websocket_urlpatterns = [
    path(
        "ws/consultations/<int:consultation_id>/",
        ConsultationChatConsumer.as_asgi(),
        name="ws-consultation-chat",
    ),
]


class ChatRouter:
    """Channels' URLRouter for these routes, without its copy of the scope.

    URLRouter passes ``dict(scope, url_route=...)`` down, and that copy (with the one it was
    made from) stays referenced for the socket's whole life: here ``url_route`` is set on
    the scope itself (docs/performance.md, "Chat delivery": memory per idle socket).
    """

    def __init__(self, routes) -> None:
        self.routes = routes

    async def __call__(self, scope, receive, send):
        path_ = scope["path"]
        root_path = scope.get("root_path", "")
        if root_path and path_.startswith(root_path):
            path_ = path_[len(root_path) :]
        path_ = path_.lstrip("/")
        for route in self.routes:
            match = route.pattern.match(path_)
            if match:
                _rest, args, kwargs = match
                scope["url_route"] = {"args": args, "kwargs": {**kwargs, **route.default_args}}
                return await route.callback(scope, receive, send)
        raise ValueError(f"No route found for path {path_!r}.")
