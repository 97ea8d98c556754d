"""The embedded default's signed file URLs: ``PUT /files/upload/<token>`` and
``GET /files/download/<token>``. The signature is the authorization (no bearer token, like a
presigned S3 URL); a tampered or expired token is a 403 JSON error."""

from __future__ import annotations

import tempfile

from django.conf import settings
from django.core import signing
from django.http import FileResponse, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from attachments.selectors import attachment_pending
from attachments.storage import (
    CHUNK,
    DOWNLOAD_SALT,
    UPLOAD_SALT,
    content_disposition,
    get_store,
    store_errors,
)
from medease.exceptions import ServiceUnavailable, error_response


def _refused():
    return error_response(403, "invalid_signature", "This link is invalid or has expired.")


def _too_large():
    return error_response(
        413, "too_large", f"Files may be at most {settings.ATTACHMENT_MAX_BYTES} bytes."
    )


@csrf_exempt
@require_http_methods(["PUT"])
def upload(request, token: str):
    try:
        grant = signing.loads(
            token, salt=UPLOAD_SALT, max_age=settings.ATTACHMENT_UPLOAD_URL_SECONDS
        )
    except signing.BadSignature:  # SignatureExpired is a subclass
        return _refused()
    # Like a presigned S3 PUT, the signed Content-Type is part of the grant. Unlike one, the
    # URL stops working once the upload was completed or removed.
    if request.content_type != grant["t"] or not attachment_pending(grant["k"]):
        return _refused()
    limit = settings.ATTACHMENT_MAX_BYTES
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return _too_large()
    # Stream to a spooled temporary file with the cap, then hand it to the store: a body
    # over the limit is never stored.
    with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as buffer:
        received = 0
        while chunk := request.read(CHUNK):
            received += len(chunk)
            if received > limit:
                return _too_large()
            buffer.write(chunk)
        buffer.seek(0)
        try:
            with store_errors():
                get_store().save(grant["k"], buffer, content_type=grant["t"])
        except ServiceUnavailable as exc:
            return error_response(503, exc.code, exc.message)
    return HttpResponse(status=200)


@require_GET
def download(request, token: str):
    try:
        grant = signing.loads(
            token, salt=DOWNLOAD_SALT, max_age=settings.ATTACHMENT_DOWNLOAD_URL_SECONDS
        )
    except signing.BadSignature:
        return _refused()
    store = get_store()
    try:
        with store_errors():
            if store.size(grant["k"]) is None:
                return error_response(404, "not_found", "Not found.")
            handle = store.open(grant["k"])
    except ServiceUnavailable as exc:
        return error_response(503, exc.code, exc.message)
    response = FileResponse(handle, content_type=grant["t"])
    response["Content-Disposition"] = content_disposition(grant["f"])
    response["Cache-Control"] = "private, no-store"
    return response
