"""Chat history and the record list run a pinned number of queries whether their pages
carry no file, one, or many (like tests/consultations/test_queries.py)."""

from __future__ import annotations

import secrets

import pytest

from attachments.models import Attachment, AttachmentStatus
from consultations import services as consultation_services
from messaging import services as messaging_services

pytestmark = pytest.mark.postgres

PAGE = 20


def ready_attachment(*, uploader, consultation, n: int) -> Attachment:
    return Attachment.objects.create(
        uploader=uploader,
        consultation=consultation,
        patient_id=consultation.patient_id,
        organization_id=consultation.organization_id,
        filename=f"scan-{n}.pdf",
        content_type="application/pdf",
        size=100,
        status=AttachmentStatus.READY,
        storage_key=f"attachments/test/{secrets.token_urlsafe(12)}",
    )


@pytest.fixture(params=["none", "one", "many"])
def files_per_page(request) -> int:
    # "many": every message/entry of the page has three.
    return {"none": 0, "one": 1, "many": PAGE * 3}[request.param]


def _spread(total: int, count: int) -> list[int]:
    """How many files each of ``count`` items gets, ``total`` in all."""
    if total == 0:
        return [0] * count
    if total == 1:
        return [1] + [0] * (count - 1)
    return [total // count] * count


@pytest.mark.parametrize(("role", "queries"), [("patient", 3), ("provider", 3), ("staff", 3)])
def test_history_pins_its_queries_whatever_the_files(
    store_kind, clinic, token_client, django_assert_num_queries, files_per_page, role, queries
):
    """Consultation and page (one statement), the page's files, one audit write (history
    and URLs); a page without files needs no file query (the page query tells)."""
    if files_per_page == 0:
        queries -= 1
    consultation = clinic["consultation"]
    for n, count in enumerate(_spread(files_per_page, PAGE)):
        sender = clinic["patient"] if n % 2 else clinic["provider"]
        ids = [
            ready_attachment(uploader=sender, consultation=consultation, n=i).pk
            for i in range(count)
        ]
        messaging_services.message_send(
            consultation=consultation,
            sender=sender,
            body=f"m{n}",
            client_id=f"q-{n}",
            attachment_ids=ids,
        )
    client = token_client(clinic[role])
    client.get("/api/v1/me")  # warm the token cache: count the steady-state path
    with django_assert_num_queries(queries):
        response = client.get(f"/api/v1/consultations/{consultation.pk}/messages", {"limit": PAGE})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == PAGE
    carried = [item for message in results for item in message["attachments"]]
    assert len(carried) == files_per_page
    assert all(item["download_url"] for item in carried)


@pytest.mark.parametrize(("role", "queries"), [("patient", 4), ("provider", 5), ("staff", 5)])
def test_record_list_pins_its_queries_whatever_the_files(
    store_kind, clinic, token_client, django_assert_num_queries, files_per_page, role, queries
):
    """As tests/consultations/test_queries.py, plus the page's files (one query); the
    entries and the URLs share one audit write."""
    consultation, provider = clinic["consultation"], clinic["provider"]
    for n, count in enumerate(_spread(files_per_page, PAGE)):
        ids = [
            ready_attachment(uploader=provider, consultation=consultation, n=i).pk
            for i in range(count)
        ]
        consultation_services.medical_record_add(
            author=provider,
            patient=clinic["patient"],
            kind="note",
            text=f"Entry {n}",
            attachment_ids=ids,
        )
    client = token_client(clinic[role])
    client.get("/api/v1/me")
    with django_assert_num_queries(queries):
        response = client.get(f"/api/v1/patients/{clinic['patient'].pk}/records", {"limit": PAGE})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == PAGE
    carried = [item for entry in results for item in entry["attachments"]]
    assert len(carried) == files_per_page
    assert all(item["download_url"] for item in carried)
