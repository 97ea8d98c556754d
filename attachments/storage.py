"""Where attachment bytes live: one small interface over two django-storages backends.

* Embedded default: ``FileSystemStorage`` under ``ATTACHMENT_DIR`` (``VAR_DIR/attachments``).
  Upload and download URLs point at MedEase's own ``/files/upload/<token>`` and
  ``/files/download/<token>`` views; the token is signed with ``django.core.signing`` and
  expires (``ATTACHMENT_UPLOAD_URL_SECONDS`` / ``ATTACHMENT_DOWNLOAD_URL_SECONDS``).
* ``STORAGE_URL`` set: ``S3Storage`` (boto3) on any S3-compatible store, private objects,
  presigned PUT and GET URLs with the same expiries.

Either way clients get ``{url, method, headers}`` to upload and a plain URL to download, so
they never branch on the backend. The web process never carries bytes with S3; with the
filesystem the signed views stream them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from django.conf import settings
from django.core import signing
from django.core.files import File
from django.core.files.storage import FileSystemStorage
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.urls import reverse

from medease.exceptions import ServiceUnavailable

logger = logging.getLogger("medease.attachments")

CHUNK = 64 * 1024
UPLOAD_SALT = "attachments.upload"
DOWNLOAD_SALT = "attachments.download"


@contextlib.contextmanager
def store_errors():
    """A store that cannot be reached (network, credentials, disk) is a 503, not a 500."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError, OSError) as exc:
        logger.warning("attachment store error", exc_info=True)
        raise ServiceUnavailable("File storage is unavailable. Try again shortly.") from exc


class AttachmentStore:
    """Operations the attachments app needs from a backend (a django-storages ``Storage``)."""

    def __init__(self, storage) -> None:
        self.storage = storage

    def upload_target(self, *, key: str, content_type: str) -> dict:
        raise NotImplementedError

    def download_url(self, *, key: str, filename: str, content_type: str) -> str:
        raise NotImplementedError

    def size(self, key: str) -> int | None:
        """The stored object's size, or None when there is none."""
        if not self.storage.exists(key):
            return None
        return self.storage.size(key)

    def read_head(self, key: str, length: int) -> bytes:
        with self.storage.open(key, "rb") as handle:
            return handle.read(length)

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        with self.storage.open(key, "rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    def open(self, key: str) -> IO[bytes]:
        return self.storage.open(key, "rb")

    def save(self, key: str, content: IO[bytes], *, content_type: str) -> None:
        wrapped = File(content)
        wrapped.content_type = content_type  # S3Storage sends it as the object's type
        stored = self.storage.save(key, wrapped)
        if stored != key:  # both backends are configured to overwrite, never to rename
            raise RuntimeError(f"storage renamed {key!r} to {stored!r}")

    def delete(self, key: str) -> None:
        if key:
            self.storage.delete(key)

    def move(self, source: str, target: str) -> None:
        raise NotImplementedError


class FileSystemStore(AttachmentStore):
    """Files under ``ATTACHMENT_DIR``; URLs signed by MedEase (served by ``attachments.files``)."""

    def upload_target(self, *, key: str, content_type: str) -> dict:
        token = signing.dumps({"k": key, "t": content_type}, salt=UPLOAD_SALT)
        return {
            "url": reverse("attachments-file-upload", kwargs={"token": token}),
            "method": "PUT",
            "headers": {"Content-Type": content_type},
        }

    def move(self, source: str, target: str) -> None:
        destination = Path(self.storage.path(target))
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.storage.path(source), destination)

    def download_url(self, *, key: str, filename: str, content_type: str) -> str:
        token = signing.dumps({"k": key, "t": content_type, "f": filename}, salt=DOWNLOAD_SALT)
        return reverse("attachments-file-download", kwargs={"token": token})


class S3Store(AttachmentStore):
    """An S3-compatible bucket; URLs presigned by boto3 (SigV4), objects private."""

    @property
    def _client(self):
        return self.storage.connection.meta.client

    def upload_target(self, *, key: str, content_type: str) -> dict:
        url = self._client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.storage.bucket_name, "Key": key, "ContentType": content_type},
            ExpiresIn=settings.ATTACHMENT_UPLOAD_URL_SECONDS,
            HttpMethod="PUT",
        )
        return {"url": url, "method": "PUT", "headers": {"Content-Type": content_type}}

    def download_url(self, *, key: str, filename: str, content_type: str) -> str:
        return self._client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.storage.bucket_name,
                "Key": key,
                "ResponseContentType": content_type,
                "ResponseContentDisposition": content_disposition(filename),
                "ResponseCacheControl": "private, no-store",
            },
            ExpiresIn=settings.ATTACHMENT_DOWNLOAD_URL_SECONDS,
        )

    def size(self, key: str) -> int | None:
        try:
            return self._client.head_object(Bucket=self.storage.bucket_name, Key=key)[
                "ContentLength"
            ]
        except self._client.exceptions.ClientError as exc:
            if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                return None
            raise

    def move(self, source: str, target: str) -> None:
        # A server-side copy: the bytes do not pass through this process.
        bucket = self.storage.bucket_name
        self._client.copy_object(
            Bucket=bucket,
            Key=target,
            CopySource={"Bucket": bucket, "Key": source},
            ACL="private",
            MetadataDirective="COPY",
        )
        self._client.delete_object(Bucket=bucket, Key=source)

    def read_head(self, key: str, length: int) -> bytes:
        # A ranged GET: checking the type must not pull a 20 MiB object through the web node.
        answer = self._client.get_object(
            Bucket=self.storage.bucket_name, Key=key, Range=f"bytes=0-{length - 1}"
        )
        return answer["Body"].read()

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        body = self._client.get_object(Bucket=self.storage.bucket_name, Key=key)["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()


def content_disposition(filename: str) -> str:
    from django.utils.http import content_disposition_header

    return content_disposition_header(as_attachment=True, filename=filename)


def _build_s3(config: dict) -> S3Store:
    from botocore.config import Config
    from storages.backends.s3 import S3Storage

    storage = S3Storage(
        bucket_name=config["bucket"],
        endpoint_url=config["endpoint_url"],
        access_key=config["access_key"],
        secret_key=config["secret_key"],
        region_name=config["region"],
        default_acl="private",
        querystring_auth=True,
        querystring_expire=settings.ATTACHMENT_DOWNLOAD_URL_SECONDS,
        file_overwrite=True,
        client_config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=30,
            retries={"mode": "standard", "max_attempts": 3},
            # S3-compatible stores do not all know the newer default checksums.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    return S3Store(storage)


@functools.cache
def get_store() -> AttachmentStore:
    """The configured store (built once per process; tests reset it on setting changes)."""
    if settings.ATTACHMENT_STORAGE:
        return _build_s3(settings.ATTACHMENT_STORAGE)
    return FileSystemStore(
        FileSystemStorage(location=settings.ATTACHMENT_DIR, allow_overwrite=True)
    )


@receiver(setting_changed)
def _reset_store(*, setting: str, **kwargs) -> None:
    if setting.startswith("ATTACHMENT_"):
        get_store.cache_clear()
