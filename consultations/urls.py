"""Clinic-core routes under /api/v1/ (docs/api.md)."""

from django.urls import path

from consultations import api, lifecycle

urlpatterns = [
    path("providers", api.ProvidersApi.as_view(), name="providers"),
    path(
        "providers/<int:provider_id>/slots", api.ProviderSlotsApi.as_view(), name="provider-slots"
    ),
    path(
        "providers/<int:provider_id>/availability",
        api.ProviderAvailabilityApi.as_view(),
        name="provider-availability",
    ),
    path(
        "providers/<int:provider_id>/queue", api.ProviderQueueApi.as_view(), name="provider-queue"
    ),
    path(
        "providers/<int:provider_id>/queue/next",
        api.ProviderQueueNextApi.as_view(),
        name="provider-queue-next",
    ),
    path("consultations", api.ConsultationsApi.as_view(), name="consultations"),
    path(
        "consultations/<int:consultation_id>",
        api.ConsultationDetailApi.as_view(),
        name="consultation-detail",
    ),
    # One route per action of the lifecycle table that has an endpoint.
    *[
        path(
            f"consultations/<int:consultation_id>/{segment}",
            api.ConsultationTransitionApi.as_view(transition=transition),
            name=f"consultation-{segment}",
        )
        for segment, transition in lifecycle.API_TRANSITIONS.items()
    ],
    path(
        "consultations/<int:consultation_id>/reschedule",
        api.ConsultationRescheduleApi.as_view(),
        name="consultation-reschedule",
    ),
    path("queue-entries/<int:entry_id>", api.QueueEntryApi.as_view(), name="queue-entry"),
    path(
        "patients/<int:patient_id>/records",
        api.PatientRecordsApi.as_view(),
        name="patient-records",
    ),
    path("dashboard", api.DashboardApi.as_view(), name="dashboard"),
]
