"""Point 8: a property-based run (hypothesis) against the OpenAPI description of the non-FHIR
endpoints. Whatever arrives, each answer is one the description lists, never a 500, never a
stack trace, and random input never yields a token."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

Secured = Any
REDIRECT = "https://app.example/cb"

_values = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=20),  # NUL and controls
    st.sampled_from(["app", "S256", "plain", "code", "authorization_code", "refresh_token",
                     "client_credentials", REDIRECT, "http://testserver/fhir", "patient/*.rs",
                     "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                     "eyJhbGciOiJub25lIn0.eyJpc3MiOiJhcHAifQ.", "a" * 43, ""]),
)
_headers = st.sampled_from([{}, {"Authorization": "Basic !!!"},
                            {"Authorization": "Basic YXBwOnNlY3JldA=="},
                            {"Authorization": "Bearer x.y.z"}])


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in spec["paths"].items()
            for method, op in item.items()]


def _fields(op: dict[str, Any]) -> list[str]:
    if "requestBody" in op:
        schema = op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
        return list(schema["properties"])
    return [p["name"] for p in op.get("parameters", [])]


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_answer_is_a_documented_one(secured: Secured, data: st.DataObject) -> None:
    client = secured.client
    if secured.authority.clients.get("app") is None:
        secured.authority.clients.add("app", "public", redirect_uris=[REDIRECT],
                                      scopes="patient/*.rs offline_access")
    spec = client.get("/oauth/openapi.json").json()
    path, method, op = data.draw(st.sampled_from(_operations(spec)))
    names = _fields(op)
    chosen = data.draw(st.lists(st.sampled_from(names), unique=True) if names else st.just([]))
    fields = {name: data.draw(_values) for name in chosen}
    if data.draw(st.booleans()):
        fields[data.draw(st.text(min_size=1, max_size=10))] = data.draw(_values)
    headers = data.draw(_headers)
    if method == "get":
        reply = client.get(f"{path}?{urlencode(fields)}", headers=headers,
                           follow_redirects=False)
    else:
        reply = client.post(path, content=urlencode(fields).encode(), headers={
            **headers, "Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False)
    documented = set(op["responses"])
    assert str(reply.status_code) in documented, (path, method, fields, reply.status_code,
                                                  reply.text[:300])
    assert "Traceback" not in reply.text and 'File "' not in reply.text
    assert "access_token" not in reply.text
    if reply.status_code == 302:
        location = reply.headers["location"]
        assert location.startswith(REDIRECT)  # only ever to the client's registered URI
        assert "code=" not in location
    expected = op["responses"][str(reply.status_code)].get("content")
    if expected:
        kind = next(iter(expected))
        assert reply.headers["content-type"].startswith(kind)
