"""Input and output shapes of the attachments API (docs/api.md, "Attachments")."""

from __future__ import annotations

from rest_framework import serializers

from attachments.models import Attachment


class AttachmentCreateInput(serializers.Serializer):
    filename = serializers.CharField(max_length=255)
    content_type = serializers.CharField(max_length=100)
    size = serializers.IntegerField(min_value=1)

    def validate_filename(self, value: str) -> str:
        # Only a name, never a path; shown to people and sent in Content-Disposition.
        name = value.replace("\\", "/").rsplit("/", 1)[-1].strip()
        if not name or any(ord(ch) < 32 for ch in name):
            raise serializers.ValidationError("Give a plain file name.")
        return name

    def validate_content_type(self, value: str) -> str:
        return value.split(";", 1)[0].strip().lower()


class UploadTargetOutput(serializers.Serializer):
    url = serializers.CharField()
    method = serializers.CharField()
    headers = serializers.DictField(child=serializers.CharField())


class AttachmentCreatedOutput(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    upload = UploadTargetOutput()


class AttachmentOutput(serializers.ModelSerializer):
    """``download_url``/``thumbnail_url`` come from the context (signed per request)."""

    download_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Attachment
        fields = [
            "id",
            "filename",
            "content_type",
            "size",
            "status",
            "created_at",
            "download_url",
            "thumbnail_url",
        ]

    def get_download_url(self, obj: Attachment) -> str | None:
        return self.context.get("download_url")

    def get_thumbnail_url(self, obj: Attachment) -> str | None:
        return self.context.get("thumbnail_url")


class AttachmentMetadataOutput(serializers.ModelSerializer):
    """What websocket events carry: no signed URLs (they expire within minutes; clients ask
    ``GET attachments/{id}`` when the person opens the file)."""

    class Meta:
        model = Attachment
        fields = ["id", "filename", "content_type", "size", "status", "created_at"]
