"""schemathesis over the OpenAPI of the gateway and of every internal service, against the REAL
running platform: no input may reach a 5xx, and every answer must be one the document declares
(status, content type, headers, body schema). Bounded: a few examples per operation and mode."""

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lucid_assets.clients import ACTOR_HEADER

pytestmark = pytest.mark.e2e

EXAMPLES = 20  # per operation and generation mode: ~50 operations x 2 modes, about two minutes here
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
INTERNAL = ("pipeline", "recorder", "storage")
ADMIN_KEY = "test-admin-key-0123456789abcdef"  # the platform fixture's LUCID_API_KEY


def caller_of(method: str, path: str) -> str:
    """The component whose part an internal operation is (lucid_assets/trust.py, DECISIONS.md):
    fuzzing it as that caller reaches its validation instead of stopping at a 403."""
    if path.startswith("/work") or path.endswith(("/manifest", "/audit")):
        return "dagster"
    if path.endswith("/verification"):
        return "storage"
    if path.endswith("/transitions") or (method == "POST" and path.endswith("/chunks")):
        return "recorder"
    return "api"


def service_headers(platform, service: str, caller: str = "api") -> dict[str, str]:
    """What a legitimate caller sends: the admin key at the gateway; inside, the caller's service
    token, and the gateway names the API key it acts for as it does on every internal call."""
    if service == "api":
        return {"Authorization": f"Bearer {ADMIN_KEY}"}
    return {**platform.service_headers(caller), **({ACTOR_HEADER: "key:fuzz"} if caller == "api" else {})}


def runner(op, mode, checks, headers: dict[str, str], found: dict[str, str], base_url: str | None = None):
    """A bounded Hypothesis run of one operation in one mode; failures are collected, not raised,
    so one run lists every distinct failure instead of stopping (and shrinking) at the first."""

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        found[""] = found.get("", 0) + 1  # requests sent (the empty key; not a failure)
        try:
            case.call_and_validate(base_url=base_url, headers=headers, checks=checks, timeout=60)
        except (Failure, FailureGroup) as exc:
            failures = exc.exceptions if isinstance(exc, FailureGroup) else (exc,)
            for f in failures:
                found.setdefault(f"{op.label}: {f.title}", f"{f.message[:300]}\n{case.as_curl_command()}")

    return run


def fuzz(base: str, headers_for) -> dict[str, str]:
    """Run every operation of the service at `base` with `headers_for(method, path)`; the distinct
    failures, each with one example."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", headers=headers_for("GET", "/openapi.json"))
    # the credential is ours (a valid one on every request), not a generated parameter; unknown query
    # parameters are ignored like most HTTP APIs do, so they are not "invalid data" here
    schema.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)
    found: dict = {}
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            checks = CHECKS + ([negative_data_rejection] if mode == GenerationMode.NEGATIVE else [])

            try:
                runner(op, mode, checks, headers_for(op.method.upper(), op.path), found)()
            except Unsatisfiable:  # nothing to negate: an operation without parameters or body
                assert mode == GenerationMode.NEGATIVE, op.label
    sent = found.pop("", 0)
    print(f"{base}: {sent} requests")
    assert sent > 0
    return found


def report(found: dict[str, str]) -> str:
    return "\n".join(f"- {k}\n  {v}" for k, v in sorted(found.items()))


def test_gateway_openapi_holds(platform):
    found = fuzz(platform.url("api"), lambda method, path: service_headers(platform, "api"))
    print(f"gateway: {len(found)} distinct failures")
    assert not found, f"{len(found)} distinct failures:\n{report(found)}"


@pytest.mark.parametrize("service", INTERNAL)
def test_internal_openapi_holds(platform, service):
    found = fuzz(platform.url(service), lambda m, path: service_headers(platform, service, caller_of(m, path)))
    print(f"{service}: {len(found)} distinct failures")
    assert not found, f"{len(found)} distinct failures:\n{report(found)}"


def test_fuzz_reports_an_answer_the_document_does_not_declare(platform):
    """The harness itself: an answer outside the document is reported (a test that cannot fail
    proves nothing). A document that claims /health answers only 201 meets the real 200."""
    schema = schemathesis.openapi.from_dict(
        {
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {"/health": {"get": {"responses": {"201": {"description": "created"}}}}},
        }
    )
    found: dict[str, str] = {}
    op = schema["/health"]["GET"]
    runner(op, GenerationMode.POSITIVE, CHECKS, {}, found, base_url=platform.url("api"))()
    assert found.pop("") > 0
    assert list(found) == ["GET /health: Undocumented status code"], found


def test_an_audit_note_with_a_float_is_refused_not_a_500(platform, admin):
    """The audit chain hashes canonical JSON, which has no floats: the pipeline says so (found by
    the recorder's first gap note, which measured seconds as a float)."""
    import httpx

    sid = admin.post("/v1/sessions", json={"name": "float note"}).json()["id"]
    url = f"{platform.url('pipeline')}/sessions/{sid}/audit"
    body = {"event": "source_back", "detail": {"gap": {"seconds": 4.5}}}
    r = httpx.post(url, json=body, headers=platform.service_headers("recorder"))
    assert r.status_code == 422 and "floats" in r.text, r.text
    body["detail"] = {"gap_ms": 4500}
    assert httpx.post(url, json=body, headers=platform.service_headers("recorder")).status_code == 201
