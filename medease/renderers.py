"""The API's JSON renderer: DRF's output, serialised by orjson.

JSON rendering was 7% of the providers list's server CPU with the standard library's
encoder (docs/performance.md). orjson writes the same bytes for what our serializers
return (compact, UTF-8, dict and list subclasses); whatever it does not encode natively,
or is told to pass through (date and time values, Decimal, lazy strings, ...), goes to
DRF's own encoder, so those keep DRF's format (``...Z`` for UTC datetimes).
"""

from __future__ import annotations

import orjson
from rest_framework import renderers
from rest_framework.utils.encoders import JSONEncoder

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
_default = JSONEncoder().default
# As DRF does: U+2028/2029 escaped, so the output is also a strict JavaScript subset.
_LINE_SEPARATOR, _PARAGRAPH_SEPARATOR = "\u2028".encode(), "\u2029".encode()


class JSONRenderer(renderers.JSONRenderer):
    """DRF's JSONRenderer with orjson for compact output (indented output stays DRF's)."""

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        if self.get_indent(accepted_media_type, renderer_context or {}) is not None:
            return super().render(data, accepted_media_type, renderer_context)
        try:
            content = orjson.dumps(data, default=_default, option=_OPTIONS)
        except orjson.JSONEncodeError:
            # Beyond orjson (an integer over 64 bits, a lone surrogate): DRF decides, as before.
            return super().render(data, accepted_media_type, renderer_context)
        if _LINE_SEPARATOR in content or _PARAGRAPH_SEPARATOR in content:
            content = content.replace(_LINE_SEPARATOR, b"\\u2028").replace(
                _PARAGRAPH_SEPARATOR, b"\\u2029"
            )
        return content
