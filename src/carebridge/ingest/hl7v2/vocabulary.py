"""Code maps, from the v2-to-FHIR IG concept maps (``mappings/codesystems``) and HL7 tables.

Data, not code: each table names the IG concept map it comes from.
"""

from __future__ import annotations

from typing import Any

from carebridge.search.ucum import canonical_unit

V2_TABLE = "http://terminology.hl7.org/CodeSystem/v2-{:04d}"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"

# HL7 table 0396 (coding systems) -> FHIR system URIs (http://hl7.org/fhir/R4/terminologies-systems.html)
CODING_SYSTEMS = {
    "LN": LOINC, "LOINC": LOINC,
    "SCT": "http://snomed.info/sct", "SNM": "http://snomed.info/sct",
    "SNOMEDCT": "http://snomed.info/sct",
    "UCUM": UCUM,
    "CVX": "http://hl7.org/fhir/sid/cvx", "MVX": "http://hl7.org/fhir/sid/mvx",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "I10": "http://hl7.org/fhir/sid/icd-10", "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm", "I9CDX": "http://hl7.org/fhir/sid/icd-9-cm",
    "C4": "http://www.ama-assn.org/go/cpt", "CPT": "http://www.ama-assn.org/go/cpt",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "RXN": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "NCIT": "http://ncimeta.nci.nih.gov",
    "CDCREC": "urn:oid:2.16.840.1.113883.6.238",
    "CDCPHINVS": "urn:oid:2.16.840.1.114222.4.5.274",
}


def coding_system(name: str) -> str | None:
    """CWE.3 -> system URI; ``HL7nnnn`` -> the v2 table's code system; local (``L``,
    ``99zzz``) and unknown names -> None (a coding without a system: local meaning)."""
    name = name.strip()
    if not name:
        return None
    found = CODING_SYSTEMS.get(name.upper())
    if found:
        return found
    if name.upper().startswith("HL7") and name[3:].isdigit():
        return V2_TABLE.format(int(name[3:]))
    if name.startswith(("http://", "https://", "urn:")):
        return name
    return None


def identifier_type(code: str) -> dict[str, Any]:
    """CX.5 (table 0203) -> Identifier.type."""
    return {"coding": [{"system": V2_TABLE.format(203), "code": code}]}


# IG concept map AdministrativeSex (table 0001 -> administrative-gender)
ADMINISTRATIVE_SEX = {"F": "female", "M": "male", "O": "other", "U": "unknown", "A": "other",
                      "N": "other"}

# IG concept map NameType (table 0200 -> name-use)
NAME_USE = {"BAD": "old", "D": "usual", "L": "official", "M": "maiden", "MSK": "anonymous",
            "N": "nickname", "NAV": "temp", "R": "official", "TEMP": "temp"}

# IG concept map MaritalStatus uses the v3 MaritalStatus codes for table 0002
MARITAL_STATUS = {"A": "L", "D": "D", "M": "M", "S": "S", "W": "W", "C": "C", "P": "T",
                  "U": "UNK", "I": "I", "N": "A", "G": "T", "O": "UNK", "R": "T", "E": "L",
                  "T": "T", "B": "U"}

# IG concept map PatientClass[EncounterClass] (table 0004 -> v3 ActCode)
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PATIENT_CLASS = {
    "E": (ACT_CODE, "EMER", "emergency"), "I": (ACT_CODE, "IMP", "inpatient encounter"),
    "O": (ACT_CODE, "AMB", "ambulatory"), "P": (ACT_CODE, "PRENC", "pre-admission"),
    "R": (V2_TABLE.format(4), "R", "Recurring patient"),
    "B": (V2_TABLE.format(4), "B", "Obstetrics"),
    "C": (V2_TABLE.format(4), "C", "Commercial Account"),
    "N": (V2_TABLE.format(4), "N", "Not Applicable"), "U": (V2_TABLE.format(4), "U", "Unknown"),
}

# IG concept map PatientClass[EncounterStatus]
PATIENT_CLASS_STATUS = {"P": "planned", "U": "unknown"}  # every other class: in-progress

# IG concept map Event[EncounterStatus] (table 0003 trigger events -> encounter-status)
EVENT_ENCOUNTER_STATUS = {
    "A01": "in-progress", "A02": "in-progress", "A03": "finished", "A04": "planned",
    "A05": "planned", "A08": "unknown", "A11": "cancelled", "A13": "in-progress",
}

# IG concept map InterpretationCodes (table 0078 -> v3 ObservationInterpretation)
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ABNORMAL_FLAGS = {
    "<": "Off scale low", ">": "Off scale high", "A": "Abnormal", "AA": "Critical abnormal",
    "B": "Better", "CAR": "Carrier", "D": "Significant change down", "DET": "Detected",
    "E": "Equivocal", "EX": "outside threshold", "EXP": "Expected", "H": "High",
    "HH": "Critical high", "HU": "Significantly high", "I": "Intermediate",
    "IE": "Insufficient evidence", "IND": "Indeterminate", "L": "Low", "LL": "Critical low",
    "LU": "Significantly low", "MS": "moderately susceptible", "N": "Normal",
    "NCL": "No CLSI defined breakpoint", "ND": "Not detected", "NEG": "Negative",
    "NR": "Non-reactive", "NS": "Non-susceptible", "POS": "Positive", "R": "Resistant",
    "RR": "Reactive", "S": "Susceptible", "SDD": "Susceptible-dose dependent",
    "SYN-R": "Synergy - resistant", "SYN-S": "Synergy - susceptible",
    "U": "Significant change up", "VS": "very susceptible", "UNE": "Unexpected",
}

# IG concept map ObservationResultStatusCodesInterpretation (table 0085 -> observation-status)
OBSERVATION_STATUS = {"A": "amended", "C": "corrected", "D": "entered-in-error", "F": "final",
                      "P": "preliminary", "X": "cancelled", "W": "entered-in-error",
                      # not mapped by the IG; closest R4 meaning:
                      "R": "preliminary", "S": "preliminary", "I": "registered",
                      "O": "registered", "U": "final", "V": "final", "B": "amended",
                      "N": "final"}

# IG concept map ResultStatus[Non-Queries] (table 0123 -> diagnostic-report-status)
REPORT_STATUS = {"O": "registered", "I": "registered", "S": "registered", "P": "preliminary",
                 "C": "corrected", "R": "partial", "F": "final", "X": "cancelled",
                 # not mapped by the IG; closest R4 meaning:
                 "A": "partial", "M": "corrected", "N": "partial"}

# IG concept map CompletionStatus (table 0322 -> Immunization.status)
COMPLETION_STATUS = {"CP": "completed", "RE": "not-done", "NA": "not-done", "PA": "completed"}

# IG concept maps TelecommunicationUseCode (0201) / EquipmentType (0202)
TELECOM_USE = {"PRN": "home", "ORN": "home", "WPN": "work", "VHN": "home", "ASN": "work",
               "EMR": "home", "NET": "home", "BPN": "work", "PRS": "mobile"}
TELECOM_SYSTEM = {"PH": "phone", "FX": "fax", "MD": "other", "CP": "phone", "BP": "pager",
                  "Internet": "email", "X.400": "email", "TDD": "other", "TTY": "other",
                  "SAT": "phone"}


def telecom_use(code: str) -> str | None:
    return TELECOM_USE.get(code)


def telecom_system(code: str) -> str | None:
    return TELECOM_SYSTEM.get(code)


# Units senders write -> UCUM (http://unitsofmeasure.org); anything already valid UCUM is kept.
UNIT_ALIASES = {
    "bpm": "/min", "beats/min": "/min", "/min": "/min", "breaths/min": "/min", "rpm": "/min",
    "br/min": "/min", "per min": "/min", "mmhg": "mm[Hg]", "mm hg": "mm[Hg]",
    "degc": "Cel", "deg c": "Cel", "c": "Cel", "°c": "Cel", "cel": "Cel",
    "degf": "[degF]", "deg f": "[degF]", "f": "[degF]", "°f": "[degF]",
    "lb": "[lb_av]", "lbs": "[lb_av]", "in": "[in_i]", "inch": "[in_i]", "ft": "[ft_i]",
    "kg/m2": "kg/m2", "kg/m^2": "kg/m2", "%": "%", "percent": "%",
    "mg/dl": "mg/dL", "g/dl": "g/dL", "meq/l": "meq/L", "iu/l": "[IU]/L", "u/l": "U/L",
    "k/ul": "10*3/uL", "x10e3/ul": "10*3/uL", "10^3/ul": "10*3/uL", "thou/ul": "10*3/uL",
    "m/ul": "10*6/uL", "x10e6/ul": "10*6/uL", "10^6/ul": "10*6/uL", "mil/ul": "10*6/uL",
    "l/min": "L/min", "lpm": "L/min", "sec": "s", "secs": "s", "min": "min", "hrs": "h",
    "inr": "{INR}", "ratio": "{ratio}",
}


def ucum_unit(text: str, system: str = "") -> str | None:
    """OBX-6 -> a UCUM code, or None when the unit means nothing UCUM can say."""
    text = text.strip()
    if not text:
        return None
    alias = UNIT_ALIASES.get(text.lower())
    if alias is not None:
        return alias
    if (system.upper() in ("UCUM", "") or system.upper().startswith("ISO+")) and \
            canonical_unit(text) is not None:
        return text
    return None
