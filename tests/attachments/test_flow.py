"""The upload/download flow on both stores (filesystem default and SeaweedFS)."""

from __future__ import annotations

import io
import time
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import time_machine
from django.utils import timezone
from PIL import Image

from attachments import services, tasks
from attachments.models import Attachment, AttachmentStatus
from attachments.storage import get_store
from consultations import services as consultation_services
from medease.models import AuditEvent
from tests.attachments.conftest import jpeg_with_gps

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
TEXT = "Lab result: glucose 5.4 mmol/L, see you next week. \u00e9\u00e8\n".encode()


def create(client, consultation, *, filename, content_type, size):
    return client.post(
        f"/api/v1/consultations/{consultation.pk}/attachments",
        {"filename": filename, "content_type": content_type, "size": size},
        format="json",
    )


def upload_file(client, transfer, consultation, *, filename, content_type, body, declared=None):
    response = create(
        client,
        consultation,
        filename=filename,
        content_type=content_type,
        size=len(body) if declared is None else declared,
    )
    assert response.status_code == 201, response.content
    created = response.json()
    assert transfer.put(created["upload"], body) == 200
    return created


def assert_no_object(attachment) -> None:
    """Neither the upload's object nor the one completion moves it to exists."""
    for key in (attachment.storage_key, services._final_key(attachment.storage_key)):
        assert get_store().size(key) is None, key


def attachment_audits(attachment_id) -> int:
    return AuditEvent.objects.filter(
        object_type="attachment", object_id__startswith=str(attachment_id)
    ).count()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("filename", "content_type", "body"),
    [("letter.pdf", "application/pdf", PDF), ("notes.txt", "text/plain", TEXT)],
)
def test_the_whole_flow_keeps_the_bytes(
    store_kind, clinic, token_client, transfer, filename, content_type, body
):
    patient_api = token_client(clinic["patient"])
    response = create(
        patient_api,
        clinic["consultation"],
        filename=filename,
        content_type=content_type,
        size=len(body),
    )
    assert response.status_code == 201, response.content
    assert "no-store" in response["Cache-Control"]
    created = response.json()
    assert created["status"] == "pending"
    assert created["upload"]["method"] == "PUT"
    assert created["upload"]["headers"] == {"Content-Type": content_type}
    attachment = Attachment.objects.get(pk=created["id"])
    assert filename not in attachment.storage_key  # the key is random
    assert transfer.put(created["upload"], body) == 200

    completed = patient_api.post(f"/api/v1/attachments/{created['id']}/complete")
    assert completed.status_code == 200, completed.content
    assert "no-store" in completed["Cache-Control"]
    assert completed.json()["status"] == "ready"
    assert completed.json()["size"] == len(body)

    # The other party reads it and downloads exactly the uploaded bytes.
    detail = token_client(clinic["provider"]).get(f"/api/v1/attachments/{created['id']}")
    assert detail.status_code == 200
    assert "no-store" in detail["Cache-Control"]
    payload = detail.json()
    assert set(payload) == {
        "id",
        "filename",
        "content_type",
        "size",
        "status",
        "created_at",
        "download_url",
        "thumbnail_url",
    }
    assert payload["filename"] == filename
    assert payload["thumbnail_url"] is None
    status, content, headers = transfer.get(payload["download_url"])
    assert status == 200
    assert content == body
    assert filename in headers.get("content-disposition", headers.get("Content-Disposition"))
    # One audit event per download URL handed out (complete + detail).
    assert attachment_audits(created["id"]) == 2
    event = AuditEvent.objects.filter(object_type="attachment").latest("id")
    assert event.user_id == clinic["provider"].pk
    assert event.patient_id == clinic["patient"].pk


@pytest.mark.postgres
def test_declared_png_with_text_bytes_is_a_mismatch_and_the_object_is_gone(
    store_kind, clinic, token_client, transfer
):
    api = token_client(clinic["patient"])
    created = upload_file(
        api,
        transfer,
        clinic["consultation"],
        filename="rash.png",
        content_type="image/png",
        body=TEXT,
    )
    attachment = Attachment.objects.get(pk=created["id"])
    assert get_store().size(attachment.storage_key) == len(TEXT)
    response = api.post(f"/api/v1/attachments/{created['id']}/complete")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upload_mismatch"
    assert_no_object(attachment)
    attachment.refresh_from_db()
    assert attachment.status == AttachmentStatus.REJECTED
    # Completing again does not resurrect it.
    again = api.post(f"/api/v1/attachments/{created['id']}/complete")
    assert again.status_code == 409


@pytest.mark.postgres
def test_more_bytes_than_declared_is_a_mismatch(store_kind, clinic, token_client, transfer):
    api = token_client(clinic["patient"])
    created = upload_file(
        api,
        transfer,
        clinic["consultation"],
        filename="a.pdf",
        content_type="application/pdf",
        body=PDF + b"x" * 100,
        declared=len(PDF),
    )
    response = api.post(f"/api/v1/attachments/{created['id']}/complete")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upload_mismatch"
    assert_no_object(Attachment.objects.get(pk=created["id"]))


@pytest.mark.postgres
def test_nothing_uploaded_is_a_mismatch(store_kind, clinic, token_client):
    api = token_client(clinic["patient"])
    created = create(
        api, clinic["consultation"], filename="a.pdf", content_type="application/pdf", size=10
    ).json()
    response = api.post(f"/api/v1/attachments/{created['id']}/complete")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upload_mismatch"


@pytest.mark.postgres
def test_limits_size_type_and_quota(store_kind, clinic, token_client, settings):
    api = token_client(clinic["patient"])
    consultation = clinic["consultation"]
    too_big = create(
        api,
        consultation,
        filename="a.pdf",
        content_type="application/pdf",
        size=settings.ATTACHMENT_MAX_BYTES + 1,
    )
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "too_large"
    refused = create(
        api, consultation, filename="a.exe", content_type="application/x-msdownload", size=10
    )
    assert refused.status_code == 415
    assert refused.json()["error"]["code"] == "unsupported_type"

    settings.ATTACHMENT_ORG_QUOTA_BYTES = 1000
    assert (
        create(
            api, consultation, filename="a.pdf", content_type="application/pdf", size=600
        ).status_code
        == 201
    )
    full = create(api, consultation, filename="b.pdf", content_type="application/pdf", size=600)
    assert full.status_code == 413
    assert full.json()["error"]["code"] == "quota_exceeded"
    assert "600 of 1000 bytes" in full.json()["error"]["message"]
    assert Attachment.objects.count() == 1


@pytest.mark.postgres
def test_closed_consultation_refuses_new_files(store_kind, clinic, token_client):
    consultation_services.consultation_cancel(
        consultation=clinic["consultation"], actor=clinic["patient"]
    )
    response = create(
        token_client(clinic["patient"]),
        clinic["consultation"],
        filename="a.pdf",
        content_type="application/pdf",
        size=10,
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "consultation_closed"


def _tamper(url: str) -> str:
    parts = urlsplit(url)
    if "X-Amz-Signature" in parts.query:
        query = dict(parse_qsl(parts.query))
        signature = query["X-Amz-Signature"]
        query["X-Amz-Signature"] = ("0" if signature[0] != "0" else "1") + signature[1:]
        return urlunsplit(parts._replace(query=urlencode(query)))
    # MedEase's own token: change the signed key inside it.
    token = parts.path.rsplit("/", 1)[1]
    other = token[:-1] + ("A" if token[-1] != "A" else "B")
    return urlunsplit(parts._replace(path=parts.path.rsplit("/", 1)[0] + "/" + other))


@pytest.mark.postgres
def test_tampered_urls_are_refused_by_the_store(store_kind, clinic, token_client, transfer):
    api = token_client(clinic["patient"])
    created = create(
        api,
        clinic["consultation"],
        filename="a.pdf",
        content_type="application/pdf",
        size=len(PDF),
    ).json()
    forged = {**created["upload"], "url": _tamper(created["upload"]["url"])}
    assert transfer.put(forged, PDF) == 403
    # Another content type than the signed one is refused too.
    other_type = {**created["upload"], "headers": {"Content-Type": "text/html"}}
    assert transfer.put(other_type, PDF) == 403
    assert transfer.put(created["upload"], PDF) == 200
    ready = api.post(f"/api/v1/attachments/{created['id']}/complete").json()
    status, _, _ = transfer.get(_tamper(ready["download_url"]))
    assert status == 403
    assert transfer.get(ready["download_url"])[0] == 200


@pytest.mark.postgres
def test_the_upload_url_cannot_change_a_completed_file(store_kind, clinic, token_client, transfer):
    api = token_client(clinic["patient"])
    created = upload_file(
        api,
        transfer,
        clinic["consultation"],
        filename="a.pdf",
        content_type="application/pdf",
        body=PDF,
    )
    attachment = Attachment.objects.get(pk=created["id"])
    assert attachment.storage_key.startswith("uploads/")
    ready = api.post(f"/api/v1/attachments/{created['id']}/complete").json()
    attachment.refresh_from_db()
    assert attachment.storage_key.startswith("attachments/")
    # The upload URL is still within its expiry: MedEase's own refuses it now; a presigned
    # S3 PUT writes under uploads/, which nothing reads (a bucket rule expires it).
    status = transfer.put(created["upload"], b"%PDF-1.4 something else entirely")
    assert status == (403 if store_kind == "filesystem" else 200)
    assert transfer.get(ready["download_url"])[1] == PDF


@pytest.mark.postgres
def test_expired_urls_are_refused_by_the_store(
    store_kind, clinic, token_client, transfer, settings
):
    api = token_client(clinic["patient"])
    settings.ATTACHMENT_UPLOAD_URL_SECONDS = 1
    settings.ATTACHMENT_DOWNLOAD_URL_SECONDS = 1
    created = create(
        api,
        clinic["consultation"],
        filename="a.pdf",
        content_type="application/pdf",
        size=len(PDF),
    ).json()
    if store_kind == "filesystem":
        with time_machine.travel(timezone.now() + timedelta(seconds=5)):
            assert transfer.put(created["upload"], PDF) == 403
        return
    # S3 presigned: wait for the store to start refusing it (expiry of one second).
    deadline = time.monotonic() + 30
    while transfer.put(created["upload"], PDF) != 403:
        assert time.monotonic() < deadline, "the presigned URL never expired"
        time.sleep(0.25)


@pytest.mark.postgres
def test_expired_download_url_is_refused(store_kind, clinic, token_client, transfer, settings):
    api = token_client(clinic["patient"])
    created = upload_file(
        api,
        transfer,
        clinic["consultation"],
        filename="a.pdf",
        content_type="application/pdf",
        body=PDF,
    )
    settings.ATTACHMENT_DOWNLOAD_URL_SECONDS = 1
    url = api.post(f"/api/v1/attachments/{created['id']}/complete").json()["download_url"]
    if store_kind == "filesystem":
        with time_machine.travel(timezone.now() + timedelta(seconds=5)):
            assert transfer.get(url)[0] == 403
        return
    deadline = time.monotonic() + 30
    while transfer.get(url)[0] != 403:
        assert time.monotonic() < deadline, "the presigned URL never expired"
        time.sleep(0.25)


@pytest.mark.postgres
def test_images_get_a_thumbnail_and_lose_their_location(
    store_kind, clinic, token_client, transfer, django_capture_on_commit_callbacks
):
    body = jpeg_with_gps()
    assert Image.open(io.BytesIO(body)).getexif().get_ifd(0x8825)  # the fixture has GPS
    api = token_client(clinic["patient"])
    created = upload_file(
        api,
        transfer,
        clinic["consultation"],
        filename="rash.jpg",
        content_type="image/jpeg",
        body=body,
    )
    with django_capture_on_commit_callbacks() as callbacks:
        completed = api.post(f"/api/v1/attachments/{created['id']}/complete")
    assert completed.status_code == 200
    assert len(callbacks) == 1  # the worker task is enqueued on commit
    # Not downloadable before the metadata is gone.
    assert completed.json()["download_url"] is None

    assert tasks.process_image(created["id"]) is True
    assert tasks.process_image(created["id"]) is False  # twice is harmless

    detail = token_client(clinic["provider"]).get(f"/api/v1/attachments/{created['id']}").json()
    status, downloaded, _ = transfer.get(detail["download_url"])
    assert status == 200
    image = Image.open(io.BytesIO(downloaded))
    exif = image.getexif()
    assert image.size == (1200, 900)
    assert not exif.get_ifd(0x8825)
    assert 0x010F not in exif and 0x0110 not in exif
    assert detail["size"] == len(downloaded)

    status, thumb, _ = transfer.get(detail["thumbnail_url"])
    assert status == 200
    thumbnail = Image.open(io.BytesIO(thumb))
    assert max(thumbnail.size) <= 320
    assert len(thumb) < len(downloaded)
    assert attachment_audits(created["id"]) == 2  # the download and the thumbnail URL


@pytest.mark.postgres
def test_another_users_attachment_is_404(
    store_kind, clinic, token_client, transfer, make_user, other_organization
):
    from accounts.models import Role

    api = token_client(clinic["patient"])
    created = upload_file(
        api,
        transfer,
        clinic["consultation"],
        filename="a.pdf",
        content_type="application/pdf",
        body=PDF,
    )
    outsider = token_client(make_user(Role.PATIENT))
    other_staff = token_client(make_user(Role.STAFF, organization=other_organization))
    for client in (outsider, other_staff):
        assert client.get(f"/api/v1/attachments/{created['id']}").status_code == 404
        assert client.post(f"/api/v1/attachments/{created['id']}/complete").status_code == 404
        assert (
            create(
                client,
                clinic["consultation"],
                filename="a.pdf",
                content_type="application/pdf",
                size=10,
            ).status_code
            == 404
        )
    # Only the uploader completes; clinic staff see but do not upload.
    assert (
        token_client(clinic["provider"])
        .post(f"/api/v1/attachments/{created['id']}/complete")
        .status_code
        == 404
    )
    staff = token_client(clinic["staff"])
    assert (
        create(
            staff, clinic["consultation"], filename="a.pdf", content_type="application/pdf", size=10
        ).status_code
        == 403
    )
    assert api.post(f"/api/v1/attachments/{created['id']}/complete").status_code == 200
    assert staff.get(f"/api/v1/attachments/{created['id']}").status_code == 200
    assert attachment_audits(created["id"]) == 2
    assert token_client(clinic["patient"]).get("/api/v1/attachments/999999").status_code == 404


@pytest.mark.postgres
def test_the_cleanup_job_removes_uploads_never_completed(
    store_kind, clinic, token_client, transfer, settings
):
    api = token_client(clinic["patient"])
    stale = upload_file(
        api,
        transfer,
        clinic["consultation"],
        filename="a.pdf",
        content_type="application/pdf",
        body=PDF,
    )
    done = upload_file(
        api,
        transfer,
        clinic["consultation"],
        filename="b.pdf",
        content_type="application/pdf",
        body=PDF,
    )
    assert api.post(f"/api/v1/attachments/{done['id']}/complete").status_code == 200
    stale_key = Attachment.objects.get(pk=stale["id"]).storage_key
    done_key = Attachment.objects.get(pk=done["id"]).storage_key

    assert tasks.cleanup() == 0  # too young
    # Age the rows rather than travel in time: the store's signatures need the real clock.
    long_ago = timezone.now() - timedelta(seconds=settings.ATTACHMENT_PENDING_TTL_SECONDS + 60)
    Attachment.objects.filter(pk__in=[stale["id"], done["id"]]).update(created_at=long_ago)
    assert tasks.cleanup() == 1
    assert tasks.cleanup() == 0  # twice is harmless
    assert not Attachment.objects.filter(pk=stale["id"]).exists()
    assert get_store().size(stale_key) is None
    assert get_store().size(done_key) == len(PDF)


def test_the_cleanup_job_is_on_the_beat_schedule():
    from workers.schedule import BEAT_SCHEDULE

    assert BEAT_SCHEDULE["attachments-cleanup"]["task"] == tasks.cleanup.name


@pytest.mark.postgres
def test_a_deleted_patients_files_lose_their_names_and_pending_uploads(
    store_kind, clinic, token_client, transfer
):
    from accounts import services as account_services

    api = token_client(clinic["patient"])
    kept = upload_file(
        api,
        transfer,
        clinic["consultation"],
        filename="Jane Doe labs.PDF",
        content_type="application/pdf",
        body=PDF,
    )
    assert api.post(f"/api/v1/attachments/{kept['id']}/complete").status_code == 200
    pending = upload_file(
        api,
        transfer,
        clinic["consultation"],
        filename="b.pdf",
        content_type="application/pdf",
        body=PDF,
    )
    pending_key = Attachment.objects.get(pk=pending["id"]).storage_key
    account_services.patient_delete(patient=clinic["patient"])

    tasks.cleanup()
    tasks.cleanup()  # twice is harmless
    assert not Attachment.objects.filter(pk=pending["id"]).exists()
    assert get_store().size(pending_key) is None
    # The file stays with the record, for the treating clinic, without the person's name.
    detail = token_client(clinic["provider"]).get(f"/api/v1/attachments/{kept['id']}").json()
    assert detail["filename"] == f"attachment-{kept['id']}.pdf"
    assert transfer.get(detail["download_url"])[1] == PDF
