"""The API's JSON parser: DRF's, refusing bodies nested deeper than anyone means to."""

from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError

# No request of the contract nests more than a few levels; deep nesting is only ever an
# attempt to exhaust the stack of the parser or of whatever walks the data afterwards.
MAX_DEPTH = 64


def nested_deeper_than(data, limit: int) -> bool:
    """True when containers nest deeper than ``limit`` (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class JSONParser(parsers.JSONParser):
    """DRF's JSONParser; too deep a body is a 400 ParseError, not a RecursionError (500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON nested deeper than {MAX_DEPTH} levels.") from None
        if nested_deeper_than(data, MAX_DEPTH):
            raise ParseError(f"JSON nested deeper than {MAX_DEPTH} levels.")
        return data
