"""Roles: the most a kind of user or system may ever do, whatever its token's scopes say.

SMART scopes say what an app asked for and was granted; the role says what the person (or
system) behind it may do at all. Access is the intersection of the two ("user/*.cruds" is
"all the current user can access", SMART App Launch 2.0, wildcard scopes). Least privilege:
every channel gets the narrowest role that does its job.

=============  ===============================================================
physician      every clinical and administrative type, cruds
nurse          every clinical and administrative type, crus (no delete)
admin          administrative types only (Practitioner, Organization, ...), cruds
auditor        AuditEvent, rs
patient        every type, rs, always narrowed to the linked Patient's compartment
interface      inbound feeds (HL7 v2 MLLP sender): every type except AuditEvent, crus
device         remote-monitoring devices: Observation, Device, DeviceMetric crus; Patient rs
backend        SMART Backend Services clients: every type except AuditEvent, cruds
system         the server itself (CLI import, migrations): every type except AuditEvent
=============  ===============================================================

AuditEvent is never written through the policy: the audit ledger appends it itself, and no
role may update or delete one (issue 5, point 5).
"""

from __future__ import annotations

from collections.abc import Iterable

PHYSICIAN = "physician"
NURSE = "nurse"
ADMIN = "admin"
AUDITOR = "auditor"
PATIENT = "patient"
INTERFACE = "interface"
DEVICE = "device"
BACKEND = "backend"
SYSTEM_ROLE = "system"

USER_ROLES = frozenset({PHYSICIAN, NURSE, ADMIN, AUDITOR, PATIENT})
#: Roles whose users must present a TOTP second factor (issue 5, point 2).
STAFF_ROLES = frozenset({PHYSICIAN, NURSE, ADMIN, AUDITOR})
CLIENT_ROLES = frozenset({BACKEND, INTERFACE, DEVICE, AUDITOR})

AUDIT_TYPE = "AuditEvent"
ADMINISTRATIVE_TYPES = frozenset({
    "Practitioner", "PractitionerRole", "Organization", "Location", "HealthcareService",
    "Endpoint", "Device", "OrganizationAffiliation",
})
_DEVICE_TYPES = frozenset({"Observation", "Device", "DeviceMetric"})
_ALL = "cruds"

# role -> (types, or None for every type but AuditEvent; operations)
_CEILINGS: dict[str, list[tuple[frozenset[str] | None, str]]] = {
    PHYSICIAN: [(None, _ALL)],
    NURSE: [(None, "crus")],
    ADMIN: [(ADMINISTRATIVE_TYPES, _ALL)],
    AUDITOR: [(frozenset({AUDIT_TYPE}), "rs")],
    PATIENT: [(None, "rs")],
    INTERFACE: [(None, "crus")],
    DEVICE: [(_DEVICE_TYPES, "crus"), (frozenset({"Patient"}), "rs")],
    BACKEND: [(None, _ALL)],
    SYSTEM_ROLE: [(None, _ALL)],
}


def role_allows(roles: Iterable[str], resource_type: str | None, operation: str) -> bool:
    """Whether any of ``roles`` may perform ``operation`` (a letter of cruds) on the type
    (None: every type at once, as a system-wide history or search needs)."""
    for role in roles:
        for types, operations in _CEILINGS.get(role, ()):
            if operation not in operations:
                continue
            if types is None:
                if resource_type != AUDIT_TYPE:
                    return True
            elif resource_type is not None and resource_type in types:
                return True
    return False


# Purpose of use (v3-ActReason, PurposeOfUse branch; the codes as in the official R4 package)
# for the audit trail: a token may carry one its client asked for (``purpose_of_use`` at the
# token endpoint: e.g. ETREAT or BTG for emergency access); otherwise the role's usual one.
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
REQUESTABLE_PURPOSES = frozenset({
    "TREAT", "ETREAT", "BTG", "ERTREAT", "HOPERAT", "CAREMGT", "HCOMPL", "HQUALIMP",
    "HSYSADMIN", "RECORDMGT", "HPAYMT", "HRESCH", "CLINTRCH", "PATRQT", "FAMRQT", "PWATRNY",
    "SUPNWK", "PUBHLTH", "SYSADMN",
})
_ROLE_PURPOSE = (  # the first role a caller has decides
    (PHYSICIAN, "TREAT"), (NURSE, "TREAT"), (INTERFACE, "TREAT"), (DEVICE, "TREAT"),
    (PATIENT, "PATRQT"), (AUDITOR, "HCOMPL"), (ADMIN, "HOPERAT"), (BACKEND, "HOPERAT"),
    (SYSTEM_ROLE, "HOPERAT"),
)


def default_purpose(roles: frozenset[str]) -> str | None:
    """The purpose of use a caller's role implies (None for a caller with no known role)."""
    return next((purpose for role, purpose in _ROLE_PURPOSE if role in roles), None)
