"""Files in chat messages and record entries, on both stores (filesystem default and
SeaweedFS): what may be attached, what answers carry, bytes compared, audit, no-store."""

from __future__ import annotations

import pytest

from attachments import tasks
from attachments.models import Attachment
from consultations.models import MedicalRecordEntry
from medease.models import AuditEvent
from messaging.models import Message
from tests.attachments.conftest import jpeg_with_gps
from tests.attachments.test_flow import PDF, TEXT, create, upload_file

pytestmark = pytest.mark.postgres

ATTACHMENT_KEYS = {
    "id",
    "filename",
    "content_type",
    "size",
    "status",
    "created_at",
    "download_url",
    "thumbnail_url",
}


def ready_file(api, transfer, consultation, *, filename="letter.pdf", body=PDF, kind=None):
    """Upload and complete a file; returns its id."""
    content_type = kind or ("application/pdf" if filename.endswith(".pdf") else "text/plain")
    created = upload_file(
        api, transfer, consultation, filename=filename, content_type=content_type, body=body
    )
    completed = api.post(f"/api/v1/attachments/{created['id']}/complete")
    assert completed.status_code == 200, completed.content
    return created["id"]


def send(api, consultation, *, client_id, attachments, body="See the file"):
    return api.post(
        f"/api/v1/consultations/{consultation.pk}/messages",
        {"body": body, "client_id": client_id, "attachments": attachments},
        format="json",
    )


def url_audits() -> int:
    return AuditEvent.objects.filter(object_type="attachment").count()


def test_a_message_carries_its_files_and_the_other_party_downloads_the_bytes(
    store_kind, clinic, token_client, transfer
):
    consultation = clinic["consultation"]
    patient_api = token_client(clinic["patient"])
    pdf = ready_file(patient_api, transfer, consultation)
    text = ready_file(patient_api, transfer, consultation, filename="notes.txt", body=TEXT)

    before = url_audits()
    response = send(patient_api, consultation, client_id="c-1", attachments=[text, pdf])
    assert response.status_code == 201, response.content
    assert "no-store" in response["Cache-Control"]
    sent = response.json()
    # In upload order (by id), whatever the order sent.
    assert [item["id"] for item in sent["attachments"]] == [pdf, text]
    assert all(set(item) == ATTACHMENT_KEYS for item in sent["attachments"])
    assert all(item["download_url"] for item in sent["attachments"])
    assert url_audits() == before + 2  # one per URL handed out

    # The same client_id again: the same message with the same files (the repeat's own
    # list is not looked at).
    again = send(patient_api, consultation, client_id="c-1", attachments=[])
    assert again.status_code == 200
    assert again.json()["id"] == sent["id"]
    assert [item["id"] for item in again.json()["attachments"]] == [pdf, text]

    history = token_client(clinic["provider"]).get(
        f"/api/v1/consultations/{consultation.pk}/messages"
    )
    assert history.status_code == 200
    assert "no-store" in history["Cache-Control"]
    (message,) = history.json()["results"]
    assert message["id"] == sent["id"]
    downloaded = {}
    for item in message["attachments"]:
        status, content, _ = transfer.get(item["download_url"])
        assert status == 200
        downloaded[item["filename"]] = content
    assert downloaded == {"letter.pdf": PDF, "notes.txt": TEXT}
    event = AuditEvent.objects.filter(object_type="attachment").latest("id")
    assert event.user_id == clinic["provider"].pk
    assert event.patient_id == clinic["patient"].pk
    # The history read and its two URLs went in one write: same request id.
    history_events = AuditEvent.objects.filter(request_id=event.request_id)
    assert sorted(history_events.values_list("object_type", flat=True)) == [
        "attachment",
        "attachment",
        "consultation.messages",
    ]


def test_only_the_senders_own_ready_unlinked_files_of_this_consultation(
    store_kind, clinic, token_client, transfer
):
    consultation = clinic["consultation"]
    patient_api = token_client(clinic["patient"])
    provider_api = token_client(clinic["provider"])
    providers_file = ready_file(provider_api, transfer, consultation)
    pending = create(
        patient_api, consultation, filename="a.pdf", content_type="application/pdf", size=10
    ).json()["id"]
    mine = ready_file(patient_api, transfer, consultation)
    assert send(patient_api, consultation, client_id="ok", attachments=[mine]).status_code == 201
    messages = Message.objects.count()

    cases = {
        # Another user's file reads exactly like an id that does not exist.
        providers_file: f"Attachment {providers_file}: no such file of yours in this consultation.",
        999_999: "Attachment 999999: no such file of yours in this consultation.",
        pending: f"Attachment {pending} is not ready: complete its upload first.",
        mine: f"Attachment {mine} is already attached to another message or entry.",
    }
    for attachment_id, problem in cases.items():
        response = send(
            patient_api, consultation, client_id=f"bad-{attachment_id}", attachments=[attachment_id]
        )
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["code"] == "invalid"
        assert error["fields"] == {"attachments": [problem]}
    # Nothing stored, nothing linked, and the refused client_ids stay free.
    assert Message.objects.count() == messages
    assert Attachment.objects.get(pk=providers_file).message_id is None
    retry = send(patient_api, consultation, client_id=f"bad-{pending}", attachments=[])
    assert retry.status_code == 201
    too_many = send(patient_api, consultation, client_id="many", attachments=list(range(1, 12)))
    assert too_many.status_code == 400
    assert too_many.json()["error"]["fields"]["attachments"] == ["At most 10 items."]
    wrong_type = send(patient_api, consultation, client_id="t", attachments=["x"])
    assert wrong_type.status_code == 400


def test_an_image_in_chat_is_downloadable_once_cleaned_with_its_thumbnail(
    store_kind, clinic, token_client, transfer
):
    consultation = clinic["consultation"]
    patient_api = token_client(clinic["patient"])
    image = ready_file(
        patient_api,
        transfer,
        consultation,
        filename="rash.jpg",
        body=jpeg_with_gps(),
        kind="image/jpeg",
    )
    sent = send(patient_api, consultation, client_id="img", attachments=[image]).json()
    (item,) = sent["attachments"]
    assert item["download_url"] is None and item["thumbnail_url"] is None  # not cleaned yet
    assert tasks.process_image(image) is True
    history = token_client(clinic["provider"]).get(
        f"/api/v1/consultations/{consultation.pk}/messages"
    )
    (item,) = history.json()["results"][0]["attachments"]
    assert transfer.get(item["download_url"])[0] == 200
    status, thumbnail, _ = transfer.get(item["thumbnail_url"])
    assert status == 200 and thumbnail[:2] == b"\xff\xd8"


def test_a_record_entry_carries_its_files(store_kind, clinic, token_client, transfer):
    consultation, patient = clinic["consultation"], clinic["patient"]
    provider_api = token_client(clinic["provider"])
    letter = ready_file(provider_api, transfer, consultation)
    patients_file = ready_file(token_client(patient), transfer, consultation, filename="p.pdf")
    records = f"/api/v1/patients/{patient.pk}/records"

    response = provider_api.post(
        records, {"kind": "note", "text": "Letter attached", "attachments": [letter]}, format="json"
    )
    assert response.status_code == 201, response.content
    assert "no-store" in response["Cache-Control"]
    (item,) = response.json()["attachments"]
    assert set(item) == ATTACHMENT_KEYS and item["id"] == letter
    assert Attachment.objects.get(pk=letter).record_entry_id == response.json()["id"]

    # The patient reads the record and downloads the letter's bytes.
    listing = token_client(patient).get(records)
    assert listing.status_code == 200
    assert "no-store" in listing["Cache-Control"]
    entry = next(e for e in listing.json()["results"] if e["id"] == response.json()["id"])
    (item,) = entry["attachments"]
    status, content, _ = transfer.get(item["download_url"])
    assert (status, content) == (200, PDF)

    # Refused entries are not stored. The patient's file is not the provider's to attach;
    # the letter is linked already; the clinic's staff uploaded nothing.
    for user, attachment_id, problem in [
        (clinic["provider"], patients_file, "no such file of yours for this patient."),
        (clinic["provider"], letter, "is already attached to another message or entry."),
        (clinic["staff"], letter, "no such file of yours for this patient."),
    ]:
        refused = token_client(user).post(
            records, {"kind": "note", "text": "x", "attachments": [attachment_id]}, format="json"
        )
        assert refused.status_code == 400, refused.content
        (message,) = refused.json()["error"]["fields"]["attachments"]
        assert message.endswith(problem), message
    assert MedicalRecordEntry.objects.filter(patient=patient).count() == 1


def test_the_clinic_uploads_to_a_record_and_attaches_it_to_an_entry(
    store_kind, clinic, token_client, transfer, make_user, other_organization
):
    patient, staff = clinic["patient"], clinic["staff"]
    staff_api = token_client(staff)
    uploads = f"/api/v1/patients/{patient.pk}/attachments"
    new_file = {"filename": "referral.pdf", "content_type": "application/pdf", "size": len(PDF)}
    response = staff_api.post(uploads, new_file, format="json")
    assert response.status_code == 201, response.content
    assert "no-store" in response["Cache-Control"]
    created = response.json()
    assert transfer.put(created["upload"], PDF) == 200
    assert staff_api.post(f"/api/v1/attachments/{created['id']}/complete").status_code == 200
    attachment = Attachment.objects.get(pk=created["id"])
    assert attachment.consultation_id is None
    assert (attachment.patient_id, attachment.organization_id) == (
        patient.pk,
        staff.organization_id,
    )

    entry = staff_api.post(
        f"/api/v1/patients/{patient.pk}/records",
        {"kind": "note", "text": "Referral letter", "attachments": [created["id"]]},
        format="json",
    )
    assert entry.status_code == 201, entry.content
    listing = token_client(patient).get(f"/api/v1/patients/{patient.pk}/records").json()
    (item,) = listing["results"][0]["attachments"]
    assert transfer.get(item["download_url"])[:2] == (200, PDF)

    # Another clinic does not treat this patient: 404, as for their record; a patient does
    # not upload to a record (their files go through a consultation).
    outsider = make_user("staff", organization=other_organization)
    assert token_client(outsider).post(uploads, new_file, format="json").status_code == 404
    assert token_client(patient).post(uploads, new_file, format="json").status_code == 403
