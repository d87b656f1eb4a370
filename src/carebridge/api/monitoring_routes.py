"""Remote-monitoring endpoints (docs/monitoring.md).

    POST /devices/{deviceId}/observations          readings (device credential)
    POST /devices/{deviceId}/heartbeat             battery/signal, a sign of life
    GET  /monitoring/devices[?since=]              fleet health and availability
    POST /monitoring/devices/{deviceId}/$credential  issue a new device secret (shown once)
    GET  /monitoring/alerts                        open alerts (a Bundle of Flags)
    GET  /monitoring/alerts/stream                 open alerts, then changes, as SSE
    POST /monitoring/alerts/{flagId}/$acknowledge  who/when kept in the Flag's history
    POST /monitoring/alerts/{flagId}/$resolve

A device authenticates with its own secret (``Authorization: Bearer <secret>``, or Basic with
the device id as user name); readings are answered after they are committed.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from carebridge.api.responses import fhir_json
from carebridge.fhir.errors import BadRequest, PayloadTooLarge
from carebridge.fhir.resource import parse_instant
from carebridge.monitoring.report import fleet_report
from carebridge.monitoring.runtime import Monitoring
from carebridge.security.policy import ANONYMOUS, Action, Caller

MAX_READINGS_BODY = 4 * 1024 * 1024


def _caller(request: Request) -> Caller:
    caller = request.scope.get("carebridge.caller")
    return caller if isinstance(caller, Caller) else ANONYMOUS


def device_secret(request: Request, device_id: str) -> str | None:
    """``Bearer <secret>`` or ``Basic base64(deviceId:secret)``."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            user, _, secret = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return secret if user == device_id else None
    return None


def monitoring_routes(monitoring: Monitoring) -> list[BaseRoute]:
    gateway = monitoring.gateway

    def device_request(request: Request) -> str | None:
        """The caller's address; when the gateway audits, the middleware need not."""
        if gateway.ledger is not None:
            request.scope["carebridge.audited"] = True
        return request.client.host if request.client else None

    async def post_observations(request: Request) -> Response:
        device_id = request.path_params["deviceId"]
        address = device_request(request)
        body = await request.body()
        if len(body) > MAX_READINGS_BODY:
            error = PayloadTooLarge(f"A readings batch is limited to {MAX_READINGS_BODY} bytes")
            gateway.refused(device_id, error, channel="http", address=address)
            raise error
        secret = device_secret(request, device_id)
        prepared = await run_in_threadpool(gateway.prepare, device_id, body, secret,
                                           channel="http", address=address)
        result = await asyncio.wrap_future(gateway.submit(prepared))
        entries: list[dict[str, Any]] = [{"response": {"status": "201 Created",
                                 "location": f"Observation/{oid}/_history/1"}}
                   for oid in result.stored]
        entries += [{"response": {"status": "200 OK", "location": f"Observation/{oid}",
                                  "outcome": {"resourceType": "OperationOutcome", "issue": [{
                                      "severity": "information", "code": "duplicate",
                                      "diagnostics": "already stored; dropped"}]}}}
                    for oid in result.duplicates]
        bundle = {"resourceType": "Bundle", "type": "batch-response", "entry": entries}
        return fhir_json(bundle, status=201 if result.stored else 200)

    async def heartbeat(request: Request) -> Response:
        device_id = request.path_params["deviceId"]
        address = device_request(request)
        body = await request.body()
        try:
            data = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            data = None  # a 400 like any other malformed heartbeat, not a 500
        if not isinstance(data, dict):
            error = BadRequest("A heartbeat is a JSON object {battery, signal}")
            gateway.refused(device_id, error, channel="http", address=address, kind="heartbeat")
            raise error

        def number(key: str) -> float | None:
            value = data.get(key)
            return float(value) if isinstance(value, int | float) else None

        await run_in_threadpool(gateway.heartbeat, device_id, device_secret(request, device_id),
                                number("battery"), number("signal"), channel="http",
                                address=address)
        return Response(status_code=204)

    async def devices(request: Request) -> Response:
        caller = _caller(request)
        monitoring.service.policy.authorize(caller, Action.SEARCH, "Device")
        now = monitoring.service.clock()
        since_text = request.query_params.get("since")
        since = parse_instant(since_text) if since_text else now - timedelta(days=1)
        report = await run_in_threadpool(fleet_report, monitoring.service, since, now)
        return fhir_json(report, pretty=request.query_params.get("_pretty") == "true")

    async def issue_credential(request: Request) -> Response:
        device_id = request.path_params["deviceId"]
        monitoring.service.policy.authorize(_caller(request), Action.UPDATE, "Device", device_id)
        await run_in_threadpool(gateway.binding, device_id)  # 404 for an unknown device
        secret = await run_in_threadpool(monitoring.credentials.issue, device_id)
        return fhir_json({"resourceType": "Parameters", "parameter": [
            {"name": "device", "valueReference": {"reference": f"Device/{device_id}"}},
            {"name": "secret", "valueString": secret}]}, status=201)

    async def open_alerts(request: Request) -> Response:
        bodies = await run_in_threadpool(monitoring.desk.open_alerts, _caller(request))
        entries = [{"resource": orjson.loads(body)} for body in bodies]
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                                  "total": len(entries)}
        if entries:  # FHIR JSON arrays are never empty
            bundle["entry"] = entries
        return fhir_json(bundle)

    async def stream(request: Request) -> Response:
        snapshot = await run_in_threadpool(monitoring.desk.open_alerts, _caller(request))
        return StreamingResponse(monitoring.stream.events(snapshot),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def acknowledge(request: Request) -> Response:
        flag = await run_in_threadpool(monitoring.desk.acknowledge, _caller(request),
                                       request.path_params["flagId"])
        return fhir_json(flag)

    async def resolve(request: Request) -> Response:
        flag = await run_in_threadpool(monitoring.desk.resolve, _caller(request),
                                       request.path_params["flagId"])
        return fhir_json(flag)

    return [
        Route("/devices/{deviceId}/observations", post_observations, methods=["POST"]),
        Route("/devices/{deviceId}/heartbeat", heartbeat, methods=["POST"]),
        Route("/monitoring/devices", devices, methods=["GET"]),
        Route("/monitoring/devices/{deviceId}/$credential", issue_credential, methods=["POST"]),
        Route("/monitoring/alerts", open_alerts, methods=["GET"]),
        Route("/monitoring/alerts/stream", stream, methods=["GET"]),
        Route("/monitoring/alerts/{flagId}/$acknowledge", acknowledge, methods=["POST"]),
        Route("/monitoring/alerts/{flagId}/$resolve", resolve, methods=["POST"]),
    ]
