"""The front desk's pages, mounted at /admin/desk/ by config/urls.py."""

from django.contrib import admin
from django.urls import path

from frontdesk import views

app_name = "frontdesk"


def staff(view):
    """The admin site's own gate: signed-in staff (else its login page), and the MFA gate."""
    return admin.site.admin_view(view)


urlpatterns = [
    path("", staff(views.home), name="home"),
    path("patients/", staff(views.patients), name="patients"),
    path("patients/new/", staff(views.patient_register), name="patient_register"),
    path("patients/<int:patient_id>/", staff(views.patient), name="patient"),
    path(
        "patients/<int:patient_id>/invite/",
        staff(views.patient_invite_resend),
        name="patient_invite_resend",
    ),
    path("book/", staff(views.book), name="book"),
    path(
        "consultations/<int:consultation_id>/reschedule/",
        staff(views.reschedule),
        name="reschedule",
    ),
    path("cancel/", staff(views.cancel), name="cancel"),
    path("board/", staff(views.board), name="board"),
    path("week/", staff(views.week), name="week"),
    path(
        "consultations/<int:consultation_id>/<slug:action>/",
        staff(views.visit_action),
        name="visit_action",
    ),
    path("walk-ins/", staff(views.walk_ins), name="walk_ins"),
    path("walk-ins/<int:provider_id>/next/", staff(views.call_next), name="call_next"),
    path("walk-ins/entries/<int:entry_id>/remove/", staff(views.queue_remove), name="queue_remove"),
    path("outbox/", staff(views.outbox), name="outbox"),
    # The patient's own page, from the e-mail: no console access needed.
    path("set-password/<str:uidb64>/<str:token>/", views.set_password, name="set_password"),
]
