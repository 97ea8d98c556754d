"""Websocket routes (the consultation chat consumer lands with the chat issue)."""

websocket_urlpatterns: list = []
