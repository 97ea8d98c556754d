"""The published OpenAPI document says what the code does (issue 10 #17): a summary and a
resource tag on every operation, the real request bodies, paged list shapes, and every
error status with the error shape. tests/medease/test_contract.py checks it against the
running product."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from drf_spectacular.generators import SchemaGenerator

from medease.schema import NOT_BLANK, TAGS

pytestmark = pytest.mark.django_db

ERROR_REF = "#/components/schemas/Error"


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(request=None, public=True)


def operations(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def request_properties(schema, operation) -> set[str] | None:
    body = operation.get("requestBody")
    if body is None:
        return None
    ref = body["content"]["application/json"]["schema"]["$ref"]
    return set(schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"])


def test_every_operation_has_a_summary_and_one_resource_tag(schema):
    assert len(list(operations(schema))) >= 30
    for method, path, operation in operations(schema):
        assert operation.get("summary"), f"{method} {path} has no summary"
        assert len(operation.get("tags", [])) == 1, f"{method} {path}: {operation.get('tags')}"
        assert operation["tags"][0] in TAGS, f"{method} {path}: {operation['tags']}"
    assert {tag["name"] for tag in schema["tags"]} <= set(TAGS)


def test_error_answers_follow_auth_body_and_path_ids(schema):
    for method, path, operation in operations(schema):
        if not path.startswith("/api/"):
            continue  # /health/*: their own shape (test_health_endpoints_are_published)
        responses = operation["responses"]
        public = operation.get("security") == [{}] or not operation.get("security")
        expected = set()
        if not public:
            expected |= {"401", "429"}
        if "requestBody" in operation:
            expected |= {"400", "413", "415"}
        if "{" in path:
            expected.add("404")
        missing = expected - set(responses)
        assert not missing, f"{method} {path} does not document {sorted(missing)}"
        for status, response in responses.items():
            if status >= "400":
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == ERROR_REF, f"{method} {path} {status}"
        for status in ("429", "503"):
            if status in responses:
                assert responses[status]["headers"]["Retry-After"]["required"] is True
        if "401" in responses:
            assert "WWW-Authenticate" in responses["401"]["headers"]


def test_the_error_shape(schema):
    components = schema["components"]["schemas"]
    assert components["Error"]["required"] == ["error"]
    detail = components["ErrorDetailOutput"]
    assert set(detail["required"]) == {"code", "message", "fields"}
    assert detail["properties"]["fields"]["additionalProperties"]["type"] == "array"


def test_transitions_document_the_body_they_read(schema):
    paths = schema["paths"]
    base = "/api/v1/consultations/{consultation_id}"
    assert request_properties(schema, paths[f"{base}/cancel"]["post"]) == {"reason"}
    assert request_properties(schema, paths[f"{base}/complete"]["post"]) == {"provider_notes"}
    assert request_properties(schema, paths[f"{base}/start"]["post"]) is None
    assert request_properties(schema, paths[f"{base}/no-show"]["post"]) is None
    assert request_properties(schema, paths[f"{base}/reschedule"]["post"]) == {"slot"}
    # Only a patient's cancel has a cutoff; only a no-show can be too early.
    assert (
        "cancellation_closed" in paths[f"{base}/cancel"]["post"]["responses"]["409"]["description"]
    )
    assert "too_early" in paths[f"{base}/no-show"]["post"]["responses"]["409"]["description"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/consultations",
        "/api/v1/providers",
        "/api/v1/providers/{provider_id}/slots",
        "/api/v1/providers/{provider_id}/queue",
        "/api/v1/patients/{patient_id}/records",
        "/api/v1/notifications",
    ],
)
def test_lists_are_documented_as_pages(schema, path):
    operation = schema["paths"][path]["get"]
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(page["required"]) == {"next", "previous", "results"}
    assert page["properties"]["results"]["type"] == "array"
    assert page["properties"]["next"]["nullable"] is True
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["limit"]["schema"] == {"type": "integer", "minimum": 1}
    assert parameters["cursor"]["schema"] == {"type": "string"}


def test_chat_history_has_its_own_page_shape(schema):
    operation = schema["paths"]["/api/v1/consultations/{consultation_id}/messages"]["get"]
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(page["properties"]) == {"results", "next"}
    parameters = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert parameters["before"]["minimum"] == 1 and parameters["after"]["minimum"] == 0


def test_provider_notes_is_documented_but_not_promised(schema):
    consultation = schema["components"]["schemas"]["ConsultationOutput"]
    assert "provider_notes" in consultation["properties"]
    assert "provider_notes" not in consultation["required"]
    assert "reason" in consultation["required"]


def test_optional_query_values_may_be_empty(schema):
    # DRF reads `?status=` as no status: the document says so, or clients guess.
    for method, path, operation in operations(schema):
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query" and not parameter.get("required"):
                assert parameter.get("allowEmptyValue") is True, f"{method} {path}"


def test_request_strings_say_what_drf_refuses(schema):
    components = schema["components"]["schemas"]
    # Not blank once trimmed, never NUL (CharField's own rules).
    assert components["RecordInputRequest"]["properties"]["text"]["pattern"] == NOT_BLANK
    assert components["CancelInputRequest"]["properties"]["reason"]["pattern"] == (r"^[^\u0000]*$")
    message = components["MessageSendRequest"]["properties"]
    assert message["client_id"]["format"] == "printable"
    assert message["body"]["maxLength"] == 10_000


def test_wall_clock_times_are_not_rfc3339_times(schema):
    preferences = schema["components"]["schemas"]["NotificationPreferenceOutput"]["properties"]
    assert "format" not in preferences["quiet_hours_start"]
    assert preferences["quiet_hours_start"]["pattern"].startswith(r"^\d{2}:\d{2}")


def test_not_blank_is_what_str_strip_says_in_every_regex_dialect():
    pattern = re.compile(NOT_BLANK)
    assert "\\s" not in NOT_BLANK  # ECMA's \s differs from Python's (U+001C, U+0085, U+FEFF)
    for code in range(1, 0x3001):
        value = chr(code)
        assert bool(pattern.match(value)) == bool(value.strip()), hex(code)
    assert not pattern.match("a\x00b")


def test_answers_do_not_promise_input_rules(schema):
    # An error message may quote the bad value it names, NUL and all.
    items = schema["components"]["schemas"]["ErrorDetailOutput"]["properties"]["fields"]
    assert "pattern" not in items["additionalProperties"]["items"]


def test_health_endpoints_are_published(schema):
    ready = schema["paths"]["/health/ready"]["get"]
    assert ready["tags"] == ["health"] and set(ready["responses"]) == {"200", "503"}
    live = schema["paths"]["/health/live"]["get"]
    assert live["responses"]["200"]["content"]["application/json"]["schema"]["required"] == [
        "status"
    ]


@pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
@pytest.mark.parametrize("method", ["post", "delete"])
def test_published_health_paths_answer_405_to_other_methods(path, method):
    # Not CSRF's 403: the schema lists GET only, so anything else is a 405 with Allow.
    response = getattr(Client(enforce_csrf_checks=True), method)(path)
    assert response.status_code == 405
    assert response["Allow"] == "GET"


@pytest.mark.django_db(transaction=True)
def test_the_schema_answers_requests_that_arrive_together():
    """drf-spectacular keeps the view it is inspecting on each view class's shared
    ``schema`` object, so two generations at once answered 500 (schemathesis's two halves
    load the schema together). The schema view generates one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def fetch(_):
        return Client().get("/api/schema/", {"format": "json"}).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(pool.map(fetch, range(12)))
    assert codes == [200] * 12
