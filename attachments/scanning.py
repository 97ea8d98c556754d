"""The malware-scanner interface called when an upload completes.

``ATTACHMENT_SCANNER`` names a callable ``scanner(*, attachment, chunks) -> str | None``:
``attachment`` is the ``Attachment`` row (its ``content_type``, ``size``, ``storage_key``),
``chunks`` an iterator over the stored bytes. Return ``None`` when the file is clean, or a
short reason when it must be refused: the upload is then rejected (400 ``upload_rejected``)
and the object deleted. Raise to signal the scanner itself failed (the completion answers an
error and can be retried). A clamd adapter would stream ``chunks`` to ``INSTREAM``.
"""

from __future__ import annotations

from collections.abc import Iterator


def accept_all(*, attachment, chunks: Iterator[bytes]) -> str | None:
    """The default: no scanner configured, every file is accepted."""
    return None
