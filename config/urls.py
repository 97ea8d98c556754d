"""Top-level URLs: the landing page, the versioned API and its index, ops endpoints, OpenAPI
docs and the staff console."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularSwaggerView

from attachments.urls import file_urlpatterns as attachment_files
from medease import views as ops
from visits.urls import page_urlpatterns as visit_pages

admin.site.site_header = "MedEase staff console"
admin.site.site_title = "MedEase"
admin.site.index_title = "Clinic administration"

api_v1 = [
    path("", include("accounts.urls")),
    path("", include("workers.urls")),
    path("", include("consultations.urls")),
    path("", include("messaging.urls")),
    path("", include("attachments.urls")),
    path("", include("visits.urls")),
]

urlpatterns = [
    path("", ops.landing, name="landing"),
    path("api/v1/", ops.api_index, name="api-index"),
    path("api/v1/", include(api_v1)),
    # Signed file URLs of the embedded storage (attachments/storage.py).
    path("files/", include(attachment_files)),
    # The visit page for patients and providers, its sign-in and join links (visits/views.py).
    path("visit/", include(visit_pages)),
    path("api/schema/", ops.SchemaView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("health/live", ops.health_live, name="health-live"),
    path("health/ready", ops.health_ready, name="health-ready"),
    path("metrics", ops.metrics_view, name="metrics"),
    # The front desk's pages, inside the console (before the admin's catch-all).
    path("admin/desk/", include("frontdesk.urls")),
    path("admin/", admin.site.urls),
]

handler400 = "medease.exceptions.json_bad_request"
handler403 = "medease.exceptions.json_permission_denied"
handler404 = "medease.exceptions.json_not_found"
handler500 = "medease.exceptions.json_server_error"
