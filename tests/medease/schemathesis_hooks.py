"""schemathesis hooks for tests/medease/test_contract.py (loaded via SCHEMATHESIS_HOOKS).

A consultation's video call exists once someone joins it: right after a booking there is
none (404). Schemathesis takes the call for the booking it has just created and reports it
missing (`ensure_resource_availability`); that report alone is dropped, the call's answers
stay under every other check.

The `printable` string format of the schema (a chat message's client_id) is Python's
str.isprintable(), which no portable regex spells out: its values are generated here.

One narrow exception to `negative_data_rejection`, by design of the framework: DRF's
CharField takes a JSON number where a string is documented and keeps its text (``7`` →
``"7"``, on purpose: "We're lenient with allowing basic numerics to be coerced into
strings"). A request whose only faults are numbers in string fields is therefore accepted.
Every other schema-violating request that is accepted still fails the run, and so does a
number in a string field together with any other fault.
"""

from __future__ import annotations

import re

import schemathesis
from hypothesis import strategies as st
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.core.mutations import OperatorKind
from schemathesis.generation.meta import CoverageScenario
from schemathesis.openapi.checks import EnsureResourceAvailability

_BODY = "body"
_TYPE_OF_PROPERTY = re.compile(r"^/properties/([^/]+)/type$")
_CALL = re.compile(r"^(GET|DELETE) /api/v1/consultations/\{consultation_id\}/call$")


def _body_properties(case) -> dict:
    raw = case.operation.definition.raw
    try:
        ref = raw["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    except KeyError:
        return {}
    name = ref.rsplit("/", 1)[1]
    return case.operation.schema.raw_schema["components"]["schemas"][name].get("properties", {})


def _number_in_string_field(case, name) -> bool:
    properties = _body_properties(case)
    value = case.body.get(name) if isinstance(case.body, dict) else None
    return (
        properties.get(name, {}).get("type") == "string"
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    )


def _only_numbers_for_strings(case) -> bool:
    if case.meta is None:
        return False
    data = case.meta.phase.data
    mutations = getattr(data, "mutations", ())
    if mutations:
        return all(
            mutation.operator == OperatorKind.CHANGE_TYPE
            and mutation.parameter_location.value == _BODY
            and len(mutation.path) == 1
            and _number_in_string_field(case, mutation.path[0])
            for mutation in mutations
        )
    # The coverage phase names the keyword it broke: /properties/<name>/type.
    match = _TYPE_OF_PROPERTY.match(getattr(data, "location", None) or "")
    return (
        getattr(data, "scenario", None) == CoverageScenario.INCORRECT_TYPE
        and data.parameter_location is not None
        and data.parameter_location.value == _BODY
        and match is not None
        and _number_in_string_field(case, match[1])
    )


def _printable_id():
    printable = st.characters(categories=("L", "M", "N", "P", "S")) | st.just(" ")
    return st.text(printable, min_size=1, max_size=64).filter(
        lambda value: value.isprintable() and value == value.strip()
    )


schemathesis.openapi.format("printable", _printable_id())


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    if isinstance(failure, EnsureResourceAvailability):
        return not _CALL.match(failure.not_available_with)
    return not (isinstance(failure, AcceptedNegativeData) and _only_numbers_for_strings(case))
