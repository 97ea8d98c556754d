"""Video visit routes: the API under /api/v1/ (docs/api.md, "Video visits") and the visit
page with its sign-in and join links under /visit/ (``page_urlpatterns``)."""

from django.urls import path

from visits import api, views

urlpatterns = [
    path(
        "consultations/<int:consultation_id>/call",
        api.ConsultationCallApi.as_view(),
        name="consultation-call",
    ),
]

page_urlpatterns = [
    path("sign-in/", views.sign_in, name="visit-sign-in"),
    path("sign-in/code/", views.sign_in_code, name="visit-sign-in-code"),
    path("signed-in/", views.signed_in, name="visit-sign-in-done"),
    path("sign-out/", views.sign_out, name="visit-sign-out"),
    path("join/<str:token>/", views.join, name="visit-join"),
    path("<int:consultation_id>/", views.visit_page, name="visit-page"),
]
