"""Clinic-core API: providers, slots, availability, consultations, queue, records, dashboard.

Views are thin: parse, find the object through a selector scoped to the caller (another
user's object is 404), call one service, serialize, audit PHI access. Datetimes are shown
in the caller's timezone.
"""

from consultations.api.consultations import (
    ConsultationDetailApi,
    ConsultationRescheduleApi,
    ConsultationsApi,
    ConsultationTransitionApi,
)
from consultations.api.dashboard import DashboardApi
from consultations.api.providers import ProviderAvailabilityApi, ProvidersApi, ProviderSlotsApi
from consultations.api.queue import ProviderQueueApi, ProviderQueueNextApi, QueueEntryApi
from consultations.api.records import PatientRecordsApi

__all__ = [
    "ConsultationDetailApi",
    "ConsultationRescheduleApi",
    "ConsultationTransitionApi",
    "ConsultationsApi",
    "DashboardApi",
    "PatientRecordsApi",
    "ProviderAvailabilityApi",
    "ProviderQueueApi",
    "ProviderQueueNextApi",
    "ProviderSlotsApi",
    "ProvidersApi",
    "QueueEntryApi",
]
