"""Issue 5, point 5: every way in records AuditEvents, not only HTTP.

HL7 v2 over MLLP (python-hl7's ``MLLPClient`` against the listener of a server built by
``build_application``), device batches over MQTT (the throwaway Mosquitto) and HTTP, the
``carebridge import`` command and the security administration commands, each over SQLite and
PostgreSQL; then the ledger still verifies. Also: the demo runs encrypted at rest, and a NUL
in a search value is a 400 on both backends.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from hl7.client import MLLPClient
from paho.mqtt.enums import CallbackAPIVersion
from starlette.testclient import TestClient
from tests.monitoring.support import wait_for
from tests.security.test_tls import read_mllp_answer
from typer.testing import CliRunner

from carebridge.app import Application, build_application
from carebridge.cli import app as cli
from carebridge.config import Settings
from carebridge.demo import data_dir
from carebridge.security.audit import verify_ledger
from carebridge.security.audit_events import cli_operator, hl7v2_event, hl7v2_outcome
from carebridge.security.authority import Authority
from carebridge.security.crypto import MAGIC, open_data_repository
from carebridge.security.policy import SYSTEM
from carebridge.services.resources import ResourceService
from carebridge.services.search import SearchService
from carebridge.testing import ThrowawayMosquitto

DATA = Path(__file__).parents[1] / "ingest" / "hl7v2" / "data"
CHANNEL = "urn:carebridge:channel"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def channel_of(event: dict[str, Any]) -> str | None:
    return next((c["code"] for c in event.get("subtype", []) if c["system"] == CHANNEL), None)


def details(entity: dict[str, Any]) -> dict[str, str]:
    return {d["type"]: d["valueString"] for d in entity.get("detail", [])}


def references(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", [])
            if "reference" in e.get("what", {})]


def who(event: dict[str, Any]) -> str:
    value: str = event["agent"][0]["who"]["identifier"]["value"]
    return value


# ------------------------------------------------------------------ a server as deployed


@dataclass
class Server:
    application: Application
    client: TestClient
    mllp_port: int

    @property
    def service(self) -> ResourceService:
        return self.application.service

    @property
    def authority(self) -> Authority:
        assert self.application.authority is not None
        return self.application.authority

    def events(self, channel: str) -> list[dict[str, Any]]:
        """The AuditEvents of one way in, as an auditor finds them through the FHIR API."""
        self.authority.ledger.flush()
        token = self.authority.issuer.issue(subject="auditor-1", client_id="audit-app",
                                            scope="user/AuditEvent.rs",
                                            roles=frozenset({"auditor"})).token
        reply = self.client.get("/fhir/AuditEvent", params={"subtype": channel,
                                                            "_count": "500"},
                                headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 200, reply.text
        return [e["resource"] for e in reply.json().get("entry", [])]

    def ledger_verifies(self) -> bool:
        self.authority.ledger.flush()
        report = verify_ledger(self.application.repository, self.authority.keys)
        assert report.ok, report.problem
        return report.checked > 0


@pytest.fixture
def server(database_url: str, mosquitto_server: ThrowawayMosquitto,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """``carebridge serve`` as deployed (authentication and audit on) with MLLP and MQTT."""
    monkeypatch.setenv("CAREBRIDGE_MQTT_CLIENT_ID", f"audit-test-{uuid.uuid4().hex[:8]}")
    # Its own shared group: a server another test killed stays in the default group until
    # its session expires, and the broker would queue part of these readings for it.
    monkeypatch.setenv("CAREBRIDGE_MQTT_GROUP", f"audit-test-{uuid.uuid4().hex[:8]}")
    monkeypatch.delenv("CAREBRIDGE_MASTER_KEY_FILE", raising=False)
    mllp_port = free_port()
    application = build_application(Settings(
        database_url=database_url, mllp_port=mllp_port, mqtt_url=mosquitto_server.url))
    with TestClient(application.asgi, raise_server_exceptions=False) as client:
        yield Server(application, client, mllp_port)


# ------------------------------------------------------------------ HL7 v2 over MLLP

UNSUPPORTED = b"MSH|^~\\&|LAB|NORTH|||2024||SIU^S12|S-1|P|2.5.1\rSCH|1"


def test_each_hl7v2_message_is_audited_with_feed_peer_message_and_outcome(
        server: Server) -> None:
    lab_result = (DATA / "R01-Basic-NG-ExampleMessage-v2.5.1.txt").read_bytes()
    unknown_merge = (DATA / "A40-REDOX-A40-2-v2.3.txt").read_bytes()
    with MLLPClient("127.0.0.1", server.mllp_port) as client:
        acks = [client.send_message(m) for m in (lab_result, lab_result, unknown_merge,
                                                 UNSUPPORTED)]
    assert [a.split(b"\r")[1].split(b"|")[1] for a in acks] == [b"AA", b"AA", b"AE", b"AR"]

    events = server.events("hl7v2-mllp")
    assert len(events) == 4  # one per message, the resend included
    for event in events:
        assert event["type"]["code"] == "110107" and event["action"] == "C"
        assert event["agent"][0]["network"] == {"address": "127.0.0.1", "type": "2"}
        assert event["agent"][0]["role"] == [{"text": "interface"}]
        assert event["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"  # the feed's role

    def by_control_id(control_id: str) -> list[dict[str, Any]]:
        return [e for e in events if details(e["entity"][0])["MSH-10"] == control_id]

    first, resend = by_control_id("NIST-LOI_5.0_1.1-NG")
    if "outcomeDesc" in first:
        first, resend = resend, first
    assert who(first) == "hl7v2:NIST Test Lab APP"  # MSH-3
    assert first["outcome"] == "0" and "outcomeDesc" not in first
    codes = {(c["system"].rsplit("/", 1)[-1], c["code"]) for c in first["subtype"]}
    assert codes == {(CHANNEL, "hl7v2-mllp"), ("v2-0076", "ORU"), ("v2-0003", "R01")}
    assert details(first["entity"][0]) == {"MSH-9": "ORU^R01", "MSH-10": "NIST-LOI_5.0_1.1-NG",
                                           "MSA-1": "AA"}
    [provenance] = [r for r in references(first) if r.startswith("Provenance/")]
    produced = server.service.read(SYSTEM, "Provenance", provenance.split("/")[1])
    assert produced.body is not None and b"NIST-LOI_5.0_1.1-NG" in produced.body
    # the resend changed nothing and says so, pointing at what the first one produced
    assert resend["outcome"] == "0" and "answered from the archive" in resend["outcomeDesc"]
    assert references(resend) == [provenance]

    [merge] = by_control_id("1270314131")
    assert merge["outcome"] == "4" and references(merge) == []
    assert merge["outcomeDesc"].startswith("AE 204 MRG[1]-1 (HL7 v2 error queue #")
    assert "Bixby" not in orjson.dumps(merge).decode()  # the reason text stays queued
    [unsupported] = by_control_id("S-1")
    assert unsupported["outcome"] == "4" and unsupported["outcomeDesc"].startswith("AR 200")
    assert who(unsupported) == "hl7v2:LAB"
    assert server.ledger_verifies()


def test_an_unreadable_frame_is_audited_too(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.mllp_port)) as sock:
        sock.sendall(b"\x0b\xff\xfe garbage\x1c\x0d")
        assert b"MSA|AR" in sock.recv(4096)
    [event] = wait_for(lambda: server.events("hl7v2-mllp"))
    assert who(event) == "hl7v2:unknown" and event["outcome"] == "4"
    assert details(event["entity"][0])["MSH-9"] == "(unreadable)"


def test_an_oversized_frame_refused_by_the_mllp_layer_is_audited(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.mllp_port)) as sock:
        sock.sendall(b"\x0bMSH|^~\\&|BIG|X|||2024||ADT^A01|BIG-1|P|2.5.1\r"
                     + b"NTE|1||" + b"x" * (1024 * 1024 + 10) + b"\x1c\x0d")
        assert b"MSA|AR" in read_mllp_answer(sock)
    [event] = wait_for(lambda: server.events("hl7v2-mllp"))
    assert who(event) == "hl7v2:unknown" and event["outcome"] == "4"
    assert details(event["entity"][0])["MSA-1"] == "AR"
    assert event["agent"][0]["network"]["address"] == "127.0.0.1"


def test_hl7v2_outcomes_follow_the_ack_and_the_error_condition() -> None:
    assert hl7v2_outcome("AA") == "0"
    assert hl7v2_outcome("AE", "101") == hl7v2_outcome("AR", "200") == "4"
    # HL7 table 0357 207, application internal error: the server failed, not the message
    assert hl7v2_outcome("AE", "207") == "8"
    from carebridge.ingest.hl7v2.processor import feed_caller

    event = hl7v2_event(feed_caller("LAB"), address=None, message_code="ADT",
                        trigger_event="A01", control_id="X-1", ack_code="AE", condition="207")
    assert event["outcome"] == "8" and "network" not in event["agent"][0]


# ------------------------------------------------------------------ devices


def _device(server: Server) -> tuple[str, str, str]:
    patient = server.service.create(SYSTEM, "Patient", {"resourceType": "Patient"}).version.id
    device = server.service.create(SYSTEM, "Device", {
        "resourceType": "Device", "status": "active",
        "patient": {"reference": f"Patient/{patient}"}}).version.id
    monitoring = server.application.monitoring
    assert monitoring is not None
    return patient, device, monitoring.credentials.issue(device)


def _reading(minutes_ago: float, **vitals: float) -> dict[str, Any]:
    moment = time.gmtime(time.time() - minutes_ago * 60)
    return {"t": time.strftime("%Y-%m-%dT%H:%M:%SZ", moment), **vitals}


def test_device_batches_over_http_are_audited_once(server: Server) -> None:
    patient, device, secret = _device(server)
    url = f"/devices/{device}/observations"
    bearer = {"Authorization": f"Bearer {secret}"}
    reading = _reading(2, hr=72, spo2=97)
    assert server.client.post(url, content=orjson.dumps(reading), headers=bearer
                              ).status_code == 201
    assert server.client.post(url, content=orjson.dumps(reading), headers=bearer
                              ).status_code == 200  # the same readings again: duplicates
    assert server.client.post(url, content=orjson.dumps(reading), headers={
        "Authorization": "Bearer wrong"}).status_code == 401
    assert server.client.post(f"/devices/{device}/heartbeat", content=b'{"battery": 80}',
                              headers=bearer).status_code == 204
    events = server.events("device-http")
    assert len(events) == 4  # one per request: the middleware did not add its own
    kind = {id(e): next(c["code"] for c in e["subtype"] if c["system"] == CHANNEL
                        and not c["code"].startswith("device-")) for e in events}
    [refused] = [e for e in events if e["outcome"] != "0"]
    [heartbeat] = [e for e in events if kind[id(e)] == "heartbeat"]
    stored, again = sorted((e for e in events if kind[id(e)] == "readings" and e is not refused),
                           key=lambda e: details(e["entity"][0])["stored"], reverse=True)
    for event in events:
        assert who(event) == f"device:{device}"
        assert event["agent"][0]["role"] == [{"text": "device"}]
        assert event["agent"][0]["network"]["address"] == "testclient"
        assert references(event) == [f"Device/{device}", f"Patient/{patient}"]
        assert event["type"]["code"] == "110107"
    assert details(stored["entity"][0]) == {"readings": "2", "stored": "2", "duplicates": "0"}
    assert details(again["entity"][0]) == {"readings": "2", "stored": "0", "duplicates": "2"}
    assert details(heartbeat["entity"][0])["readings"] == "0"
    assert refused["outcome"] == "4" and refused["outcomeDesc"] == "refused (401)"
    # nothing about /devices/ was recorded as a plain HTTP request
    rest = server.events("operation")
    assert not [e for e in rest if "/devices/" in e.get("outcomeDesc", "")]
    assert server.ledger_verifies()


def test_device_batches_over_mqtt_are_audited(server: Server,
                                              mosquitto_server: ThrowawayMosquitto) -> None:
    patient, device, secret = _device(server)
    monitoring = server.application.monitoring
    assert monitoring is not None
    wait_for(lambda: all(w.connected.is_set() for w in monitoring._mqtt))  # type: ignore[attr-defined]
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5)
    sender.connect(mosquitto_server.host, mosquitto_server.port)
    sender.loop_start()
    try:
        topic = f"carebridge/devices/{device}/observations"
        good = [{**_reading(3, hr=70, rr=16), "secret": secret}]
        bad = [{**_reading(4, hr=71), "secret": "not-the-secret"}]
        for payload in (orjson.dumps(good), orjson.dumps(bad), b"{not json"):
            sender.publish(topic, payload, qos=1).wait_for_publish(10)
        events = wait_for(lambda: (found := server.events("device-mqtt")) and len(found) >= 3
                          and found)
    finally:
        sender.loop_stop()
        sender.disconnect()
    assert len(events) == 3
    accepted = [e for e in events if e["outcome"] == "0"]
    refused = [e for e in events if e["outcome"] == "4"]
    assert len(accepted) == 1 and len(refused) == 2
    assert details(accepted[0]["entity"][0]) == {"readings": "2", "stored": "2",
                                                 "duplicates": "0"}
    for event in events:
        assert who(event) == f"device:{device}"
        assert "network" not in event["agent"][0]  # the broker relays: no device address
        assert references(event) == [f"Device/{device}", f"Patient/{patient}"]
    assert sorted(e["outcomeDesc"] for e in refused) == ["refused (400)", "refused (401)"]
    assert server.ledger_verifies()


# ------------------------------------------------------------------ the command line


def _stored_events(database_url: str) -> list[dict[str, Any]]:
    repository = open_data_repository(database_url)
    try:
        found = SearchService(ResourceService(repository)).search(
            SYSTEM, "AuditEvent", [("_count", "500")])
        events = [orjson.loads(m.body) for m in found.matches]
        report = verify_ledger(repository, Authority.open(repository, "http://x").keys)
        assert report.ok, report.problem
    finally:
        repository.close()
    return events


def test_cli_import_records_one_event_per_file(database_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_bytes(b'{"resourceType": "Bundle", "type": "transaction", "entry": [{}]}')
    good = data_dir() / "hospitalInformation.json.gz"
    done = CliRunner().invoke(cli, ["import", "--database", database_url, str(good), str(bad)])
    assert done.exit_code == 1, done.output  # one file failed
    events = [e for e in _stored_events(database_url) if channel_of(e) == "cli-import"]
    by_file = {e["entity"][0]["name"]: e for e in events}
    assert set(by_file) == {str(good), str(bad)}
    loaded, refused = by_file[str(good)], by_file[str(bad)]
    assert who(loaded) == cli_operator() and loaded["outcome"] == "0"
    assert loaded["type"]["code"] == "110107" and loaded["action"] == "C"
    assert loaded["purposeOfEvent"][0]["coding"][0]["code"] == "RECORDMGT"
    counts = details(loaded["entity"][0])
    assert counts and all(int(n) > 0 for n in counts.values()) and "Organization" in counts
    assert refused["outcome"] == "4" and refused["outcomeDesc"] == "not loaded (400)"
    assert "detail" not in refused["entity"][0]


def test_hl7v2_replay_is_audited_with_the_operator(database_url: str) -> None:
    """`carebridge hl7 replay` records the message like the listener does, with the OS user
    who ran it as the requestor; a failed replay (AE) and an accepted one both count."""
    from carebridge.ingest.hl7v2.processor import Hl7Processor

    repository = open_data_repository(database_url)
    try:
        hl7 = Hl7Processor(ResourceService(repository))
        merge = (b"MSH|^~\\&|ADT1|GOOD HEALTH|CB|CB|20240101||ADT^A40|R-40|P|2.5.1\r"
                 b"EVN|A40|20240101\rPID|1||SURV-1^^^GH^MR||Keep^Ann||19700101|F\r"
                 b"MRG|GONE-1^^^GH^MR")
        hl7.handle_frame(merge)  # the merged patient is unknown: AE, queued
        [queued] = hl7.store.errors()
    finally:
        repository.close()
    runner = CliRunner()
    failed = runner.invoke(cli, ["hl7", "replay", str(queued.id), "--database", database_url])
    assert failed.exit_code == 1, failed.output
    events = [e for e in _stored_events(database_url) if channel_of(e) == "hl7v2-replay"]
    assert len(events) == 1
    [event] = events
    assert who(event) == cli_operator() and event["agent"][0]["requestor"] is True
    feed = event["agent"][1]
    assert feed["who"]["identifier"]["value"] == "hl7v2:ADT1" and feed["requestor"] is False
    assert event["outcome"] == "4" and f"#{queued.id}" in event["outcomeDesc"]
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "RECORDMGT"
    assert details(event["entity"][0])["MSH-10"] == "R-40"


def test_security_administration_is_audited(database_url: str) -> None:
    run = CliRunner().invoke
    password = "correct horse battery staple"
    steps = [
        ["user", "add", "house", "--role", "physician", "--password", password],
        ["user", "add", "house", "--role", "physician", "--password", password],  # exists
        ["user", "reset-mfa", "house"],
        ["user", "disable", "house"],
        ["user", "disable", "nobody"],
        ["client", "add", "chart", "--kind", "public", "--scope", "patient/*.rs",
         "--redirect-uri", "https://apps.example.org/cb"],
        ["keys", "rotate"],
    ]
    codes = [run(cli, [*step, "--database", database_url]).exit_code for step in steps]
    assert codes == [0, 2, 0, 0, 1, 0, 0]
    events = [e for e in _stored_events(database_url) if e["type"]["code"] == "110113"]
    assert len(events) == len(steps)  # one each, failures included
    summary = sorted((e["subtype"][0]["code"], e["action"], e["outcome"],
                      e["entity"][0]["what"]["identifier"]["value"]) for e in events)
    assert summary == sorted([
        ("110137", "C", "0", "house"), ("110137", "C", "4", "house"),
        ("110137", "U", "0", "house"), ("110137", "U", "0", "house"),
        ("110137", "U", "4", "nobody"),
        ("110129", "C", "0", "chart"), ("110129", "U", "0", "signing and data keys")])
    assert all(who(e) == cli_operator() for e in events)
    assert {e["purposeOfEvent"][0]["coding"][0]["code"] for e in events} == {"SYSADMN"}
    text = orjson.dumps(events).decode()
    assert password not in text and "TOTP secret:" not in text


# ------------------------------------------------------------------ small fixes


def test_demo_runs_encrypted_at_rest(tmp_path: Path) -> None:
    port, mllp = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBRIDGE_")}
    env["PYTHONUNBUFFERED"] = "1"
    database = f"sqlite:///{tmp_path}/var/carebridge.db"
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "carebridge"), "demo", "--database", database,
         "--port", str(port), "--mllp-port", str(mllp), "--patients", "1", "--rate", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/fhir/metadata") as reply:
                    return bool(reply.status == 200)
            except OSError:
                assert process.poll() is None, "the demo exited"
                return False

        wait_for(up, timeout=120)
    finally:
        process.terminate()
        try:
            output = process.communicate(timeout=30)[0].decode()
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0].decode()
    key = tmp_path / "var" / "demo-master.key"
    assert key.exists() and key.stat().st_mode & 0o077 == 0
    assert "Encryption at rest: on" in output and str(key) in output.replace("\n", "")
    with sqlite3.connect(tmp_path / "var" / "carebridge.db") as db:
        bodies = [bytes(r[0]) for r in db.execute(
            "SELECT body FROM resource WHERE resource_type = 'Patient'")]
    assert bodies and all(b.startswith(MAGIC) for b in bodies)  # sealed, not clear JSON


@pytest.mark.parametrize("query", ["name=a%00b", "identifier=x%7C1%00", "_id=%00",
                                   "birthdate=2000%00"])
def test_nul_in_a_search_value_is_a_400_naming_the_parameter(client: TestClient,
                                                             query: str) -> None:
    reply = client.get(f"/fhir/Patient?{query}")
    assert reply.status_code == 400, reply.text
    outcome = reply.json()
    assert outcome["resourceType"] == "OperationOutcome"
    name = query.split("=")[0]
    assert outcome["issue"][0]["expression"] == [name]
    assert "NUL" in outcome["issue"][0]["diagnostics"]
