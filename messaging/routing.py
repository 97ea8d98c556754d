"""Websocket routes (docs/api.md, "Websocket")."""

from asgiref.sync import markcoroutinefunction
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
    """Channels' URLRouter for these routes, without its copy of the scope or a frame.

    URLRouter passes ``dict(scope, url_route=...)`` down, and that copy (with the one it was
    made from) stays referenced for the socket's whole life: here ``url_route`` is set on
    the scope itself. And it awaits the consumer in a frame of its own (as does the
    consumer's ``as_asgi`` wrapper), suspended for as long as the socket is open: here the
    consumer is made from the route's class and its coroutine handed to the caller to
    await (docs/performance.md, "Handshakes and idle sockets": memory per idle socket).
    """

    def __init__(self, routes) -> None:
        self.routes = routes

    @markcoroutinefunction
    def __call__(self, scope, receive, send):
        path_ = scope["path"]
        root_path = scope.get("root_path", "")
        if root_path and path_.startswith(root_path):
            path_ = path_[len(root_path) :]
        path_ = path_.lstrip("/")
        for route in self.routes:
            match = route.pattern.match(path_)
            if match:
                _rest, args, kwargs = match
                if route.default_args:
                    kwargs = {**kwargs, **route.default_args}
                scope["url_route"] = {"args": args, "kwargs": kwargs}
                consumer_class = getattr(route.callback, "consumer_class", None)
                if consumer_class is None:  # a plain ASGI application
                    return route.callback(scope, receive, send)
                consumer = consumer_class(**route.callback.consumer_initkwargs)
                return consumer(scope, receive, send)
        raise ValueError(f"No route found for path {path_!r}.")
