"""Point 5: AuditEvents for every interaction, login and denial; a tamper-evident ledger."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from typer.testing import CliRunner

from carebridge.cli import app as cli
from carebridge.security.audit import AuditLedger, chain_hash, verify_ledger
from carebridge.security.audit_events import rest_event
from carebridge.security.policy import SYSTEM, Caller
from carebridge.security.users import LoginFailed

Secured = Any


def _events(secured: Secured, **params: str) -> list[dict[str, Any]]:
    secured.authority.ledger.flush()
    h = secured.headers("user/*.rs", {"auditor"})
    reply = secured.client.get("/fhir/AuditEvent", params={"_count": "200", **params},
                               headers=h)
    assert reply.status_code == 200, reply.text
    return [e["resource"] for e in reply.json().get("entry", [])]


def test_interactions_and_denials_are_audited(secured: Secured) -> None:
    pid = secured.service.create(SYSTEM, "Patient", {"resourceType": "Patient"}).version.id
    doctor = secured.headers("user/*.cruds", {"physician"})
    secured.client.get(f"/fhir/Patient/{pid}", headers=doctor)
    secured.client.get("/fhir/Observation?code=1234-5", headers=doctor)
    secured.client.get(f"/fhir/Patient/{pid}", headers=secured.headers("user/*.rs", {"admin"}))
    secured.client.get(f"/fhir/Patient/{pid}")  # no token
    events = _events(secured)
    by_interaction = {(e["subtype"][0]["code"], e["outcome"]) for e in events}
    assert {("read", "0"), ("search-type", "0"), ("read", "4")} <= by_interaction
    read = next(e for e in events if e["subtype"][0]["code"] == "read" and e["outcome"] == "0")
    assert read["agent"][0]["who"]["identifier"]["value"] == "dr-who"
    assert read["agent"][1]["who"]["identifier"]["value"] == "test-app"  # on behalf of
    assert read["agent"][0]["network"]["address"] == "testclient"
    assert {"reference": f"Patient/{pid}"} in [x["what"] for x in read["entity"]]
    search = next(e for e in events if e["subtype"][0]["code"] == "search-type")
    assert base64.b64decode(search["entity"][0]["query"]) == b"code=1234-5"
    # purpose of use: the role's usual one when the token names none (v3-ActReason)
    assert read["purposeOfEvent"] == [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}]
    denied = next(e for e in events if e["subtype"][0]["code"] == "read"
                  and e["outcome"] == "4" and e["agent"][0]["who"]["identifier"]["value"]
                  != "anonymous")
    assert denied["purposeOfEvent"][0]["coding"][0]["code"] == "HOPERAT"  # the admin's
    anonymous = [e for e in events if e.get("outcomeDesc") == "no valid access token"]
    assert "purposeOfEvent" not in anonymous[0]
    assert anonymous and anonymous[0]["agent"][0]["who"]["identifier"]["value"] == "anonymous"
    # auditors search by patient through the FHIR API
    about = _events(secured, patient=pid)
    assert about and all(f"Patient/{pid}" in str(e["entity"]) for e in about)
    assert secured.client.get("/fhir/AuditEvent", headers=secured.headers(
        "user/*.rs", {"physician"})).status_code == 403


def test_logins_and_tokens_are_audited(secured: Secured) -> None:
    oauth = secured.authority.oauth
    secured.authority.users.add("ada", "correct horse battery", {"patient"}, patient_id="p")
    secured.authority.clients.add("app", "public", redirect_uris=["https://a/cb"],
                                  scopes="patient/*.rs")
    request = oauth.check_request({"client_id": "app", "redirect_uri": "https://a/cb",
                                   "scope": "patient/*.rs", "state": "s"})
    with pytest.raises(LoginFailed):
        oauth.login(request, "ada", "wrong-password!", None)
    oauth.login(request, "ada", "correct horse battery", None)
    logins = [e for e in _events(secured) if e["type"]["code"] == "110114"]
    assert sorted((e["outcome"], e.get("outcomeDesc")) for e in logins) == [
        ("0", "authenticated"), ("4", "wrong password")]


def _fill(ledger: AuditLedger, batches: int = 4, size: int = 5) -> None:
    for b in range(batches):
        for n in range(size):
            ledger.record(rest_event("read", 200, SYSTEM, address="10.0.0.1",
                                     resource_type="Patient", resource_id=f"p{b}-{n}"))
        ledger.flush()


def _sql(secured: Secured, text: str, params: tuple[Any, ...] = ()) -> None:
    store = secured.authority.store
    store.query(text + " RETURNING 1", params, write=True)


def test_an_untouched_ledger_verifies(secured: Secured) -> None:
    _fill(secured.authority.ledger)
    report = verify_ledger(secured.authority.store.repository, secured.authority.keys)
    assert report.ok and report.checked == 20 and report.checkpoints == 4


def test_a_flush_larger_than_one_insert_keeps_the_chain(secured: Secured) -> None:
    # Ledger entries go in with multi-row INSERTs of 200: a flush of 450 spans three.
    ledger = secured.authority.ledger
    ledger.close()  # no background flush in between: these flushes are the test's own
    _fill(ledger, batches=1, size=450)
    _fill(ledger, batches=1, size=3)
    report = verify_ledger(secured.authority.store.repository, secured.authority.keys)
    assert report.ok and report.checked == 453 and report.checkpoints == 2
    seqs = [r[0] for r in secured.authority.store.query(
        "SELECT seq FROM audit_ledger ORDER BY seq")]
    assert seqs == list(range(1, 454))


@pytest.mark.parametrize("attack", ["edit", "delete", "insert", "reorder", "truncate",
                                    "rewrite"])
def test_tampering_is_found_at_the_first_bad_entry(secured: Secured, attack: str) -> None:
    _fill(secured.authority.ledger)
    store = secured.authority.store
    rows = {r[0]: (bytes(r[1]), bytes(r[2]), bytes(r[3])) for r in store.query(
        "SELECT seq, body, prev_hash, hash FROM audit_ledger")}
    expected = 7
    if attack == "edit":
        _sql(secured, "UPDATE audit_ledger SET body = ? WHERE seq = 7",
             (rows[7][0].replace(b"p1-1", b"p9-9"),))
    elif attack == "delete":
        _sql(secured, "DELETE FROM audit_ledger WHERE seq = 7")
    elif attack == "insert":  # a forged entry at 7, the rest shifted up by one
        for seq in sorted(rows, reverse=True):
            if seq >= 7:
                _sql(secured, "UPDATE audit_ledger SET seq = ? WHERE seq = ?", (seq + 1, seq))
        _sql(secured, "INSERT INTO audit_ledger (seq, event_id, body, prev_hash, hash) VALUES"
             " (7, 'x', ?, ?, ?)", (b"{}", rows[6][2], chain_hash(rows[6][2], 7, b"{}")))
        expected = 8
    elif attack == "reorder":
        _sql(secured, "UPDATE audit_ledger SET body = ? WHERE seq = 7", (rows[8][0],))
        _sql(secured, "UPDATE audit_ledger SET body = ? WHERE seq = 8", (rows[7][0],))
    elif attack == "truncate":
        _sql(secured, "DELETE FROM audit_ledger WHERE seq > 16")
        expected = 17
    elif attack == "rewrite":  # edit, then recompute every later hash: only the seals catch it
        prev = rows[6][2]
        for seq in range(7, 21):
            body = rows[seq][0].replace(b"p1-1", b"p9-9") if seq == 7 else rows[seq][0]
            digest = chain_hash(prev, seq, body)
            _sql(secured, "UPDATE audit_ledger SET body = ?, prev_hash = ?, hash = ?"
                 " WHERE seq = ?", (body, prev, digest, seq))
            prev = digest
        expected = 10  # the first checkpoint after the edit (each batch of 5 is sealed)
    report = verify_ledger(store.repository, secured.authority.keys)
    assert not report.ok
    assert report.first_bad == expected, report.problem


def test_audit_verify_command(secured: Secured, database_url: str) -> None:
    _fill(secured.authority.ledger)
    ok = CliRunner().invoke(cli, ["audit", "verify", "--database", database_url])
    assert ok.exit_code == 0 and "20 entries" in ok.output and "intact" in ok.output
    _sql(secured, "DELETE FROM audit_ledger WHERE seq = 3")
    broken = CliRunner().invoke(cli, ["audit", "verify", "--database", database_url])
    assert broken.exit_code == 1 and "LEDGER BROKEN at entry 3" in broken.output


def test_the_service_refuses_audit_writes_even_to_the_system(secured: Secured) -> None:
    physician = Caller("x", client_id="c", roles=frozenset({"physician"}),
                       scopes=frozenset({"user/*.cruds"}))
    with pytest.raises(Exception, match="audit ledger only"):
        secured.service.create(physician, "AuditEvent", {"resourceType": "AuditEvent"})
    with pytest.raises(Exception, match="audit ledger only"):
        secured.service.delete(SYSTEM, "AuditEvent", "x")


def test_even_allow_all_refuses_audit_writes(service: Any) -> None:
    with pytest.raises(Exception, match="audit ledger only"):
        service.create(SYSTEM, "AuditEvent", {"resourceType": "AuditEvent"})


def test_other_ways_in_over_http_are_audited_too(secured: Secured) -> None:
    secured.client.get("/devices/d1/nothing", headers=secured.headers("user/*.rs",
                                                                      {"physician"}))
    secured.client.post("/monitoring/alerts/x/$ack")  # no token
    details = {e.get("outcomeDesc") for e in _events(secured)
               if e["subtype"][0]["code"] == "operation"}
    assert "GET /devices/d1/nothing" in details
    assert "no valid access token" in details
