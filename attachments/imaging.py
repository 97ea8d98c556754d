"""Image work done by the worker (Pillow): a copy without metadata, and a thumbnail."""

from __future__ import annotations

import io
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

THUMBNAIL_SIZE = (320, 320)
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}


def clean_and_thumbnail(
    source: IO[bytes], *, content_type: str
) -> tuple[io.BytesIO, io.BytesIO] | None:
    """The image re-encoded without EXIF/XMP/text chunks (location, camera, dates), turned
    upright first so dropping the orientation tag changes nothing; and a JPEG thumbnail.
    ``None`` when Pillow cannot decode it."""
    try:
        with Image.open(source) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    icc_profile = image.info.get("icc_profile")  # colours, not personal data: kept
    image.info = {}  # nothing of the original's metadata is written back
    options = {"icc_profile": icc_profile} if icc_profile else {}
    fmt = FORMATS.get(content_type, "PNG")
    if fmt == "JPEG":
        options["quality"] = 90
        if image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("RGB")
    clean = io.BytesIO()
    image.save(clean, format=fmt, **options)
    clean.seek(0)

    preview = image
    if preview.mode in ("RGBA", "LA", "P"):
        preview = preview.convert("RGBA")
        background = Image.new("RGB", preview.size, "white")
        background.paste(preview, mask=preview.getchannel("A"))
        preview = background
    elif preview.mode != "RGB":
        preview = preview.convert("RGB")
    preview = preview.copy()
    preview.thumbnail(THUMBNAIL_SIZE)
    thumbnail = io.BytesIO()
    preview.save(thumbnail, format="JPEG", quality=80)
    thumbnail.seek(0)
    return clean, thumbnail
