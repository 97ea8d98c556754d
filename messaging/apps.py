from django.apps import AppConfig


class MessagingConfig(AppConfig):
    name = "messaging"
    verbose_name = "Messaging"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from accounts.services import on_credentials_revoked
        from consultations.selectors import unread_counter_register
        from messaging import tickets
        from messaging.events import agroup_send
        from messaging.selectors import unread_counts_for
        from messaging.services import user_sockets_close
        from visits.events import delivery_register

        # Consultation bodies (lists, detail, dashboard) carry the caller's unread count; the
        # clinic core asks through this registration, so consultations never imports messaging.
        unread_counter_register(unread_counts_for)

        # Video calls' state and signals reach the consultation's sockets through the chat's
        # hub, like its messages (visits sit below the chat and cannot import it).
        delivery_register(agroup_send)

        # Logout, password change, deactivation, a role or clinic change (API or console):
        # close the user's open sockets everywhere.
        on_credentials_revoked(user_sockets_close)
        # ... and refuse the websocket tickets they were issued before (messaging.tickets).
        on_credentials_revoked(tickets.user_tickets_revoke)
        # Signing out of the console closes the sockets that session opened.
        user_logged_out.connect(_close_session_sockets, dispatch_uid="messaging-session-ended")


def _close_session_sockets(sender, request, user, **kwargs) -> None:
    from messaging.middleware import session_sockets_close

    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        session_sockets_close(session_key=session_key)
