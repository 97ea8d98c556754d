"""Record entries' files, wired into consultations through its hooks
(``consultations.services.records.RecordAttachments``; registered by ``AttachmentsConfig``)."""

from __future__ import annotations

from attachments import output, selectors, services


def record_outputs(*, request, entries) -> tuple[dict[int, list[dict]], list[tuple]]:
    """``{entry id: [attachment with signed URLs]}`` of the entries and the audit rows of
    the URLs handed out (one query, whatever the number of entries)."""
    found = selectors.attachments_of_record_entries(
        user=request.user, entry_ids=[entry.pk for entry in entries]
    )
    audit_rows: list[output.TypedAuditRow] = []
    bodies = {
        entry_id: output.signed_bodies(request, attachments, audit_rows)
        for entry_id, attachments in found.items()
    }
    return bodies, audit_rows


def register() -> None:
    from consultations.services.records import RecordAttachments, record_attachments_register

    record_attachments_register(
        RecordAttachments(link=services.attachments_link_to_record, outputs=record_outputs)
    )
