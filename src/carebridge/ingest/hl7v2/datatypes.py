"""HL7 v2 data types -> FHIR R4 data types, following the v2-to-FHIR IG's data type maps
(``mappings/datatypes``: CX[Identifier], XPN[HumanName], XAD[Address], XTN[ContactPoint],
CWE[CodeableConcept], HD[Identifier], DTM[dateTime], CWE[Quantity], NR[Range], SN[...]).

Each function takes a normalised composite (components -> subcomponents, unescaped; see
:mod:`carebridge.ingest.hl7v2.parsing`) and returns FHIR JSON, or None when nothing is valued,
so mappers can leave empty elements out (FHIR forbids empty elements and arrays).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from carebridge.ingest.hl7v2.errors import DATA_TYPE_ERROR, MessageError
from carebridge.ingest.hl7v2.parsing import Composite, part, sub_composite
from carebridge.ingest.hl7v2.vocabulary import (
    NAME_USE,
    coding_system,
    identifier_type,
    telecom_system,
    telecom_use,
    ucum_unit,
)
from carebridge.search.query import escape_value

Json = dict[str, Any]

# Systems for identifiers whose assigning authority has only a local name (HD.1): a URN
# under this prefix keeps them distinct per authority (CX.4, IG: "determine whether
# organization or system").
LOCAL_AUTHORITY = "urn:carebridge:hl7v2:authority:"


_EMPTYABLE = (str, list, dict)


def compact(data: Json) -> Json | None:
    """Drop empty values (FHIR forbids empty strings, arrays and objects)."""
    out = {k: v for k, v in data.items()
           if v or (v is not None and type(v) not in _EMPTYABLE)}  # keeps False and 0
    return out or None


# ------------------------------------------------------------------------ identifiers


def hd_system(hd: Composite) -> str | None:
    """HD (namespace^universal id^type) -> a system URI (IG HD[uri])."""
    namespace, universal, kind = part(hd, 1), part(hd, 2), part(hd, 3).upper()
    if universal:
        if kind == "ISO" or re.fullmatch(r"[0-2](\.\d+)+", universal):
            return f"urn:oid:{universal}"
        if kind == "UUID":
            return f"urn:uuid:{universal.lower()}"
        if kind in ("URI", "URL") or ":" in universal:
            return universal
    if namespace:
        if namespace.startswith(("http://", "https://", "urn:")):
            return namespace
        return LOCAL_AUTHORITY + quote(namespace, safe="")
    return None


def cx_identifier(cx: Composite, default_authority: Composite | None = None) -> Json | None:
    """CX -> Identifier (IG CX[Identifier]). Without CX.4 the identifier belongs to the
    sending facility's namespace (MSH-4), so feeds from two facilities never collide."""
    value = part(cx, 1)
    if not value:
        return None
    authority = sub_composite(cx, 4)
    if not any(part(authority, i) for i in (1, 2)) and default_authority is not None:
        authority = default_authority
    identifier: Json = {"system": hd_system(authority), "value": value}
    type_code = part(cx, 5)
    if type_code:
        identifier["type"] = identifier_type(type_code)
    period = compact({"start": dtm(part(cx, 7)), "end": dtm(part(cx, 8))})
    if period:
        identifier["period"] = period
    display = part(authority, 1) or part(authority, 2)
    if display:
        identifier["assigner"] = {"display": display}
    return compact(identifier)


def ei_identifier(ei: Composite, type_code: str | None = None,
                  default_authority: Composite | None = None) -> Json | None:
    """EI (entity id^namespace^universal id^type) -> Identifier (IG EI[Identifier-Extension])."""
    value = part(ei, 1)
    if not value:
        return None
    authority = [ei[i] if i < len(ei) else [""] for i in (1, 2, 3)]
    if not any(part(authority, i) for i in (1, 2)) and default_authority is not None:
        authority = default_authority
    identifier: Json = {"system": hd_system(authority), "value": value}
    if type_code:
        identifier["type"] = identifier_type(type_code)
    return compact(identifier)


def token(identifier: Json) -> str:
    """``system|value`` for a search parameter, URL-encoded for a conditional URL. Both
    parts are escaped as FHIR search requires (search.html#escaping): an identifier
    ``12,34`` is one value, not ``12`` or ``34``."""
    system = escape_value(identifier.get("system") or "")
    return quote(f"{system}|{escape_value(identifier['value'])}", safe=":/")


# ------------------------------------------------------------------------ names, addresses


def xpn_name(xpn: Composite) -> Json | None:
    """XPN -> HumanName (IG XPN[HumanName])."""
    given = [g for g in (part(xpn, 2), *part(xpn, 3).split()) if g]
    suffix = [s for s in (part(xpn, 4), part(xpn, 6), part(xpn, 14)) if s]
    return compact({
        "use": NAME_USE.get(part(xpn, 7)),
        "family": part(xpn, 1),
        "given": given,
        "prefix": [p for p in (part(xpn, 5),) if p],
        "suffix": suffix,
    })


def xad_address(xad: Composite) -> Json | None:
    """XAD -> Address (IG XAD[Address]); XAD.7 per the AddressType concept maps."""
    kind = part(xad, 7).upper()
    use = {"H": "home", "B": "work", "O": "work", "C": "temp", "BA": "old", "BI": "billing",
           "BR": None, "M": None, "SH": None}.get(kind)
    address_type = {"M": "postal", "SH": "physical"}.get(kind)
    return compact({
        "use": use,
        "type": address_type,
        "line": [line for line in (part(xad, 1), part(xad, 2)) if line],
        "city": part(xad, 3),
        "state": part(xad, 4),
        "postalCode": part(xad, 5),
        "country": part(xad, 6),
        "district": part(xad, 9),
    })


def xtn_contact(xtn: Composite, default_use: str | None = None) -> Json | None:
    """XTN -> ContactPoint (IG XTN[ContactPoint])."""
    equipment = part(xtn, 3)
    if equipment in ("Internet", "X.400"):
        value = part(xtn, 4)
    else:
        value = part(xtn, 1) or part(xtn, 12)
        if not value and part(xtn, 7):
            value = " ".join(p for p in (part(xtn, 5) and "+" + part(xtn, 5), part(xtn, 6),
                                         part(xtn, 7)) if p)
            if part(xtn, 8):
                value += " X" + part(xtn, 8)
        if not value and part(xtn, 4):
            value = part(xtn, 4)
    if not value:
        return None
    system = telecom_system(equipment) or ("email" if "@" in value else "phone")
    return compact({"system": system, "value": value,
                    "use": telecom_use(part(xtn, 2)) or default_use})


# ------------------------------------------------------------------------ codes


def cwe_concept(cwe: Composite) -> Json | None:
    """CWE/CE/CNE -> CodeableConcept (IG CWE[CodeableConcept]): triplets 1-3, 4-6, 10-12."""
    codings = []
    for code_at, text_at, system_at, version_at in ((1, 2, 3, 7), (4, 5, 6, 8),
                                                    (10, 11, 12, 13)):
        code, display = part(cwe, code_at).strip(), part(cwe, text_at)
        if not code and not display:
            continue  # nothing of this triplet would be kept (most CWE fill only the first)
        coding = compact({
            "system": coding_system(part(cwe, system_at)),
            "version": part(cwe, version_at),
            "code": code,
            "display": display,
        })
        assert coding is not None
        codings.append(coding)
    text = part(cwe, 9)
    if not text and not any("code" in c for c in codings):
        text = part(cwe, 2)
    return compact({"coding": [c for c in codings if "code" in c], "text": text})


# ------------------------------------------------------------------------ time


_DTM = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")


def dtm(value: str, where: tuple[str, int, int] | None = None) -> str | None:
    """DTM/DT/TS (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) -> FHIR dateTime.

    FHIR requires a zone once a time is given; a v2 time without one is the sender's local
    time, which we cannot know, so it is read as UTC (documented in docs/hl7v2.md).
    """
    value = value.strip()
    if not value:
        return None
    match = _DTM.match(value)
    if not match:
        if where is None:
            return None
        segment, sequence, field = where
        raise MessageError(f"{value!r} is not an HL7 date/time (YYYYMMDD[HHMM[SS]][+ZZZZ])",
                           DATA_TYPE_ERROR, segment, sequence, field)
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if month is None:
        return year
    if day is None:
        return f"{year}-{month}"
    date = f"{year}-{month}-{day}"
    if hour is None:
        return date
    offset = f"{zone[:3]}:{zone[3:]}" if zone else "Z"
    if offset in ("+00:00", "-00:00"):
        offset = "Z"
    return f"{date}T{hour}:{minute or '00'}:{second or '00'}{fraction or ''}{offset}"


def date_only(value: str) -> str | None:
    text = dtm(value)
    return text[:10] if text else None


def instant(value: str) -> str | None:
    """A dateTime precise to the second -> FHIR instant; coarser values give None."""
    text = dtm(value)
    return text if text and "T" in text else None


# ------------------------------------------------------------------------ quantities


def decimal(value: str) -> Decimal | None:
    text = value.strip()
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def json_number(number: Decimal) -> int | float:
    """orjson writes Python numbers; keep integers integral (FHIR decimals keep precision
    as written: '5' stays 5, '5.0' becomes 5.0)."""
    return int(number) if number == number.to_integral_value() and "." not in str(number) \
        else float(number)


def quantity(number: Decimal, units: Composite) -> Json:
    """NM + CWE units -> Quantity with a UCUM code when the unit is (or maps to) UCUM."""
    out: Json = {"value": json_number(number)}
    text = part(units, 1)
    label = part(units, 2) or text
    if text or label:
        out["unit"] = label or text
        code = ucum_unit(text, part(units, 3))
        if code is not None:
            out["system"] = "http://unitsofmeasure.org"
            out["code"] = code
    return out
