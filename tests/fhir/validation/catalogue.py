"""A catalogue of deliberately broken resources, each with the issue the R4 spec implies.

Every case starts from a valid resource and breaks one thing. The expected issue code comes
from http://hl7.org/fhir/R4/valueset-issue-type.html (structure: the JSON does not fit the
definition; required: a mandatory element or slice is missing; value: a primitive or fixed
value is wrong; code-invalid: a code outside a bound value set; invariant: a constraint fails;
invalid: a bundle rule; business-rule: a data-quality rule) and the expression is the
FHIRPath of the element the spec's rule is about.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
VS_CATEGORY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                           "code": "vital-signs"}]}
SD = "http://hl7.org/fhir/StructureDefinition/"

PATIENT: Json = {
    "resourceType": "Patient", "id": "p1", "active": True,
    "identifier": [{"system": "http://hospital.example.org/mrn", "value": "12345"}],
    "name": [{"family": "Smith", "given": ["Ann"]}],
    "gender": "female", "birthDate": "1980-05-01",
}

HEART_RATE: Json = {
    "resourceType": "Observation", "id": "hr1", "status": "final",
    "category": [VS_CATEGORY],
    "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-01-01T10:00:00Z",
    "valueQuantity": {"value": 72, "unit": "beats/minute", "system": UCUM, "code": "/min"},
}


def _component(code: str, value: float) -> Json:
    return {"code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}


BLOOD_PRESSURE: Json = {
    "resourceType": "Observation", "id": "bp1", "status": "final",
    "meta": {"profile": [SD + "bp"]},
    "category": [VS_CATEGORY],
    "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-01-01T10:00:00Z",
    "component": [_component("8480-6", 120), _component("8462-4", 80)],
}

ENCOUNTER: Json = {
    "resourceType": "Encounter", "id": "e1", "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
    "subject": {"reference": "Patient/p1"},
    "period": {"start": "2024-01-01T10:00:00Z", "end": "2024-01-01T11:00:00Z"},
}

CONDITION: Json = {
    "resourceType": "Condition", "id": "c1",
    "clinicalStatus": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
    "verificationStatus": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
        "code": "confirmed"}]},
    "category": [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
        "code": "encounter-diagnosis"}]}],
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
    "subject": {"reference": "Patient/p1"},
}

MEDICATION_REQUEST: Json = {
    "resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
    "medicationCodeableConcept": {"coding": [{
        "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361"}]},
    "subject": {"reference": "Patient/p1"},
    "dosageInstruction": [{"timing": {"repeat": {"frequency": 1, "period": 1,
                                                 "periodUnit": "d"}}}],
}

ALLERGY: Json = {
    "resourceType": "AllergyIntolerance", "id": "a1",
    "clinicalStatus": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
        "code": "active"}]},
    "code": {"text": "penicillin"},
    "patient": {"reference": "Patient/p1"},
}

VALID = [PATIENT, HEART_RATE, BLOOD_PRESSURE, ENCOUNTER, CONDITION, MEDICATION_REQUEST, ALLERGY]


@dataclass(frozen=True)
class Case:
    name: str
    resource: Json
    code: str
    expression: str
    severity: str = "error"


def _path(steps: str) -> list[str | int]:
    out: list[str | int] = []
    for part in steps.split("."):
        while "[" in part:
            head, _, rest = part.partition("[")
            if head:
                out.append(head)
            index, _, part = rest.partition("]")
            out.append(int(index))
        if part:
            out.append(int(part) if part.isdigit() else part)
    return out


_DELETE = object()


def broken(base: Json, **changes: Any) -> Json:
    """A copy of ``base`` with ``a__b__0__c=value`` set (``_DELETE`` removes)."""
    resource = copy.deepcopy(base)
    for dotted, value in changes.items():
        steps = _path(dotted.replace("__", "."))
        node: Any = resource
        for step in steps[:-1]:
            node = node[step]
        last = steps[-1]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)
    return resource


D = _DELETE


def _cases() -> list[Case]:
    c: list[Case] = []

    def add(name: str, resource: Json, code: str, expression: str,
            severity: str = "error") -> None:
        c.append(Case(name, resource, code, expression, severity))

    # -- structure: unknown elements, JSON shapes (json.html) -------------------------------
    add("unknown top-level element", broken(PATIENT, nickname="Annie"), "structure",
        "Patient.nickname")
    add("unknown nested element", broken(PATIENT, name__0__famly="Smyth"), "structure",
        "Patient.name[0].famly")
    add("choice element without its type", broken(HEART_RATE, value=72), "structure",
        "Observation.value")
    add("choice type not allowed", broken(HEART_RATE, valueReference={"reference": "X/1"}),
        "structure", "Observation.valueReference")
    add("two types of one choice", broken(HEART_RATE, valueString="72"), "structure",
        "Observation.valueString")
    add("repeating element not an array", broken(PATIENT, name={"family": "Smith"}),
        "structure", "Patient.name")
    add("single element as an array", broken(PATIENT, gender=["female"]), "structure",
        "Patient.gender")
    add("empty array", broken(PATIENT, name=[]), "structure", "Patient.name")
    add("empty object (ele-1)", broken(PATIENT, name=[{}]), "invariant", "Patient.name[0]")
    add("null value", broken(PATIENT, gender=None), "structure", "Patient.gender")
    add("string where an object belongs", broken(PATIENT, name=["Ann Smith"]), "structure",
        "Patient.name[0]")
    add("primitive extension part not an object", broken(PATIENT, _gender="x"), "structure",
        "Patient.gender")
    add("unknown element in a backbone", broken(PATIENT, contact=[{"nom": "x"}]),
        "structure", "Patient.contact[0].nom")
    add("unknown element in a datatype", broken(HEART_RATE, valueQuantity__amount=3),
        "structure", "Observation.valueQuantity.amount")
    add("unknown resource type contained",
        broken(PATIENT, contained=[{"resourceType": "Nonsense", "id": "x"}],
               managingOrganization={"reference": "#x"}),
        "structure", "Patient.contained[0].resourceType")

    # -- value: primitive types (datatypes.html#primitive) ----------------------------------
    add("boolean as a string", broken(PATIENT, active="true"), "value", "Patient.active")
    add("integer with a fraction", broken(PATIENT, multipleBirthInteger=1.5), "value",
        "Patient.multipleBirthInteger")
    add("integer out of 32-bit range", broken(PATIENT, multipleBirthInteger=3_000_000_000),
        "value", "Patient.multipleBirthInteger")
    add("unsignedInt negative", broken(PATIENT, photo=[{"contentType": "image/png",
                                                        "size": -1}]),
        "value", "Patient.photo[0].size")
    add("positiveInt zero",
        broken(MEDICATION_REQUEST, dosageInstruction__0__timing__repeat__frequency=0),
        "value", "MedicationRequest.dosageInstruction[0].timing.repeat.frequency")
    add("decimal as a string", broken(HEART_RATE, valueQuantity__value="72"), "value",
        "Observation.valueQuantity.value")
    add("date in another format", broken(PATIENT, birthDate="01/05/1980"), "value",
        "Patient.birthDate")
    add("date that does not exist", broken(PATIENT, birthDate="2021-02-29"), "value",
        "Patient.birthDate")
    add("dateTime with a time but no zone",
        broken(HEART_RATE, effectiveDateTime="2024-01-01T10:00:00"), "value",
        "Observation.effectiveDateTime")
    add("instant without seconds", broken(HEART_RATE, issued="2024-01-01T10:00Z"), "value",
        "Observation.issued")
    add("time out of range", broken(HEART_RATE, valueQuantity=D, valueTime="25:00:00"),
        "value", "Observation.valueTime")
    add("id with a space", broken(PATIENT, id="bad id"), "value", "Patient.id")
    add("uri with whitespace", broken(PATIENT, identifier__0__system="http://x y"), "value",
        "Patient.identifier[0].system")
    add("code with a leading space", broken(PATIENT, gender=" female"), "value",
        "Patient.gender")
    add("empty string", broken(PATIENT, name__0__family=""), "value", "Patient.name[0].family")
    add("base64 that is not", broken(PATIENT, photo=[{"contentType": "image/png",
                                                      "data": "###"}]),
        "value", "Patient.photo[0].data")
    add("number where a string belongs", broken(PATIENT, name__0__family=42), "value",
        "Patient.name[0].family")

    # -- required: cardinality (elementdefinition.html#min-max) ---------------------------
    add("missing status", broken(HEART_RATE, status=D), "required", "Observation.status")
    add("missing code", broken(HEART_RATE, code=D), "required", "Observation.code")
    add("missing choice element",
        broken(MEDICATION_REQUEST, medicationCodeableConcept=D), "required",
        "MedicationRequest.medication[x]")
    add("missing element in a backbone", broken(PATIENT, link=[{"type": "seealso"}]),
        "required", "Patient.link[0].other")
    add("extension without url", broken(PATIENT, extension=[{"valueString": "x"}]),
        "required", "Patient.extension[0].url")
    add("missing encounter class", broken(ENCOUNTER, **{"class": D}), "required",
        "Encounter.class")

    # -- code-invalid: bindings (terminologies.html#strength) ------------------------------
    add("status not in the required value set", broken(HEART_RATE, status="done"),
        "code-invalid", "Observation.status")
    add("gender in the wrong case", broken(PATIENT, gender="Male"), "code-invalid",
        "Patient.gender")
    add("required CodeableConcept with an unknown code",
        broken(ALLERGY, clinicalStatus__coding__0__code="bogus"), "code-invalid",
        "AllergyIntolerance.clinicalStatus.coding[0]")
    add("required CodeableConcept with text only",
        broken(ALLERGY, clinicalStatus={"text": "active"}), "code-invalid",
        "AllergyIntolerance.clinicalStatus")
    add("required CodeableConcept from another system",
        broken(CONDITION, verificationStatus__coding__0__system="http://example.org/status"),
        "code-invalid", "Condition.verificationStatus.coding[0]")
    add("required code in a backbone",
        broken(PATIENT, link=[{"other": {"reference": "Patient/p2"}, "type": "same"}]),
        "code-invalid", "Patient.link[0].type")
    add("quantity comparator not in its value set",
        broken(HEART_RATE, valueQuantity__comparator="~"), "code-invalid",
        "Observation.valueQuantity.comparator")
    add("extensible binding, known system, unknown code",
        broken(CONDITION, category__0__coding__0__code="bogus"), "code-invalid",
        "Condition.category[0].coding[0]", "warning")
    add("preferred binding, known system, unknown code",
        broken(HEART_RATE, category__0__coding__0__code="vital-sign"), "code-invalid",
        "Observation.category[0].coding[0]", "warning")
    add("extensible binding on a Coding",
        broken(ENCOUNTER, **{"class": {"system":
                                       "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                       "code": "NOPE"}}),
        "code-invalid", "Encounter.class", "warning")

    # -- invariant: constraints (FHIRPath) ---------------------------------------------------
    add("obs-6: value and dataAbsentReason",
        broken(HEART_RATE, dataAbsentReason={"text": "not measured"}), "invariant",
        "Observation")
    add("obs-7: component with the observation's own code",
        broken(HEART_RATE, component=[{"code": HEART_RATE["code"],
                                       "valueQuantity": HEART_RATE["valueQuantity"]}]),
        "invariant", "Observation")
    add("obs-3: reference range with neither bounds nor text",
        broken(HEART_RATE, referenceRange=[{"type": {"text": "normal"}}]), "invariant",
        "Observation.referenceRange[0]")
    add("per-1: period ends before it starts",
        broken(ENCOUNTER, period={"start": "2024-01-02T00:00:00Z",
                                  "end": "2024-01-01T00:00:00Z"}),
        "invariant", "Encounter.period")
    add("per-1 with plain dates", broken(ENCOUNTER, period={"start": "2024-01-02",
                                                            "end": "2024-01-01"}),
        "invariant", "Encounter.period")
    add("pat-1: contact without any detail",
        broken(PATIENT, contact=[{"relationship": [{"text": "sister"}]}]), "invariant",
        "Patient.contact[0]")
    add("cpt-2: telecom value without system", broken(PATIENT, telecom=[{"value": "555"}]),
        "invariant", "Patient.telecom[0]")
    add("att-1: attachment data without contentType",
        broken(PATIENT, photo=[{"data": "aGVsbG8="}]), "invariant", "Patient.photo[0]")
    add("qty-3: quantity code without system",
        broken(HEART_RATE, valueQuantity__system=D), "invariant", "Observation.valueQuantity")
    add("rng-2: range low above high",
        broken(HEART_RATE, valueQuantity=D,
               valueRange={"low": {"value": 90, "system": UCUM, "code": "/min"},
                           "high": {"value": 60, "system": UCUM, "code": "/min"}}),
        "invariant", "Observation.valueRange")
    add("sqty-1: SimpleQuantity with a comparator",
        broken(HEART_RATE, referenceRange=[{"low": {"value": 60, "comparator": ">",
                                                    "system": UCUM, "code": "/min"}}]),
        "invariant", "Observation.referenceRange[0].low")
    add("tim-1: timing duration without units",
        broken(MEDICATION_REQUEST, dosageInstruction__0__timing__repeat__duration=5),
        "invariant", "MedicationRequest.dosageInstruction[0].timing.repeat")
    add("con-5: entered-in-error condition with a clinical status",
        broken(CONDITION, verificationStatus__coding__0__code="entered-in-error"),
        "invariant", "Condition")
    add("ext-1: extension with neither value nor extensions",
        broken(PATIENT, extension=[{"url": "http://example.org/x"}]), "invariant",
        "Patient.extension[0]")
    add("ext-1: extension with both value and extensions",
        broken(PATIENT, extension=[{"url": "http://example.org/x", "valueString": "a",
                                    "extension": [{"url": "y", "valueString": "b"}]}]),
        "invariant", "Patient.extension[0]")
    add("ref-1: local reference to a missing contained resource",
        broken(PATIENT, managingOrganization={"reference": "#org"}), "invariant",
        "Patient.managingOrganization.reference")
    add("dom-2: contained resource that contains another",
        broken(PATIENT, managingOrganization={"reference": "#org"},
               contained=[{"resourceType": "Organization", "id": "org", "name": "x",
                           "contained": [{"resourceType": "Organization", "id": "o2",
                                          "name": "y"}]}]),
        "invariant", "Patient.contained[0].contained")
    add("dom-3: contained resource nobody refers to",
        broken(PATIENT, contained=[{"resourceType": "Organization", "id": "org",
                                    "name": "x"}]),
        "invariant", "Patient.contained[0]")
    add("dom-4: contained resource with a version id",
        broken(PATIENT, managingOrganization={"reference": "#org"},
               contained=[{"resourceType": "Organization", "id": "org", "name": "x",
                           "meta": {"versionId": "1"}}]),
        "invariant", "Patient.contained[0].meta")
    add("dom-5: contained resource with security labels",
        broken(PATIENT, managingOrganization={"reference": "#org"},
               contained=[{"resourceType": "Organization", "id": "org", "name": "x",
                           "meta": {"security": [{"system": "http://terminology.hl7.org/"
                                                  "CodeSystem/v3-Confidentiality",
                                                  "code": "R"}]}}]),
        "invariant", "Patient.contained[0].meta.security")
    add("txt-1: narrative with a script",
        broken(PATIENT, text={"status": "generated", "div": '<div xmlns="http://www.w3.org/'
                              '1999/xhtml"><script>alert(1)</script>Ann</div>'}),
        "invariant", "Patient.text.div")
    add("txt-2: empty narrative",
        broken(PATIENT, text={"status": "generated",
                              "div": '<div xmlns="http://www.w3.org/1999/xhtml"> </div>'}),
        "invariant", "Patient.text.div")
    add("txt-1: narrative outside the XHTML namespace",
        broken(PATIENT, text={"status": "generated", "div": "<div>Ann</div>"}),
        "invariant", "Patient.text.div")

    # -- value: references (references.html) -------------------------------------------------
    add("reference that is not a reference", broken(HEART_RATE, subject__reference="Patient 1"),
        "value", "Observation.subject.reference")
    add("reference to a type the element does not allow",
        broken(HEART_RATE, subject__reference="Medication/1"), "value",
        "Observation.subject.reference")
    add("reference to an unknown type", broken(HEART_RATE, subject__reference="Pateint/1"),
        "value", "Observation.subject.reference")
    add("reference with an invalid id",
        broken(HEART_RATE, subject__reference="Patient/" + "x" * 65), "value",
        "Observation.subject.reference")
    add("Reference.type disagrees with the reference",
        broken(HEART_RATE, subject={"reference": "Patient/p1", "type": "Group"}), "value",
        "Observation.subject.type")
    add("malformed urn:uuid", broken(HEART_RATE, subject__reference="urn:uuid:1234"), "value",
        "Observation.subject.reference")

    # -- profiles: vital signs (observation-vitalsigns.html) -------------------------------
    hr_profiled = broken(HEART_RATE, meta={"profile": [SD + "heartrate"]})
    add("vital sign without effective time", broken(hr_profiled, effectiveDateTime=D),
        "required", "Observation.effective[x]")
    add("vital sign without the vital-signs category", broken(hr_profiled, category=D),
        "required", "Observation.category")
    add("vital sign with only another category",
        broken(hr_profiled, category=[{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory"}]}]),
        "required", "Observation.category")
    add("heart rate profile with another LOINC code",
        broken(hr_profiled, code__coding__0__code="9279-1"), "required",
        "Observation.code.coding")
    add("heart rate profile with a unit of another kind",
        broken(hr_profiled, valueQuantity__code="kg"), "value",
        "Observation.valueQuantity.code")
    add("blood pressure without its diastolic component",
        broken(BLOOD_PRESSURE, component=[_component("8480-6", 120)]), "required",
        "Observation.component")
    add("blood pressure component in the wrong unit",
        broken(BLOOD_PRESSURE, component__0__valueQuantity__code="mmHg"), "code-invalid",
        "Observation.component[0].valueQuantity.code")
    add("blood pressure with a top-level value",
        broken(BLOOD_PRESSURE, valueQuantity={"value": 120, "system": UCUM,
                                              "code": "mm[Hg]"}),
        "structure", "Observation.valueQuantity")
    add("profile of another resource type",
        broken(PATIENT, meta={"profile": [SD + "heartrate"]}), "structure",
        "Patient.meta.profile")

    # -- bundles (bundle.html) ---------------------------------------------------------------
    add("bundle entry with an invalid resource",
        {"resourceType": "Bundle", "type": "collection",
         "entry": [{"fullUrl": "http://example.org/fhir/Observation/hr1",
                    "resource": broken(HEART_RATE, status="done")}]},
        "code-invalid", "Bundle.entry[0].resource.status")
    add("bundle fullUrl that names another resource",
        {"resourceType": "Bundle", "type": "collection",
         "entry": [{"fullUrl": "http://example.org/fhir/Patient/p2", "resource": PATIENT}]},
        "invalid", "Bundle.entry[0].fullUrl")
    add("bdl-1: total outside a search or history",
        {"resourceType": "Bundle", "type": "collection", "total": 1}, "invariant", "Bundle")
    add("bdl-3: request in a searchset",
        {"resourceType": "Bundle", "type": "searchset",
         "entry": [{"resource": PATIENT, "request": {"method": "GET", "url": "Patient"}}]},
        "invariant", "Bundle")
    add("bdl-7: repeated fullUrl",
        {"resourceType": "Bundle", "type": "collection",
         "entry": [{"fullUrl": "urn:uuid:0b8b4e0a-6e55-4b5a-9c9c-1a8e8f3b6a11",
                    "resource": broken(PATIENT, id=D)},
                   {"fullUrl": "urn:uuid:0b8b4e0a-6e55-4b5a-9c9c-1a8e8f3b6a11",
                    "resource": broken(PATIENT, id=D)}]},
        "invariant", "Bundle")

    # -- business-rule: data quality (quality/rules.py) ----------------------------------------
    add("heart rate of 400/min", broken(HEART_RATE, valueQuantity__value=400),
        "business-rule", "Observation.valueQuantity.value", "warning")
    add("body temperature of 60 Cel",
        broken(HEART_RATE, code__coding__0__code="8310-5",
               valueQuantity={"value": 60, "unit": "C", "system": UCUM, "code": "Cel"}),
        "business-rule", "Observation.valueQuantity.value", "warning")
    add("body weight in centimetres",
        broken(HEART_RATE, code__coding__0__code="29463-7",
               valueQuantity={"value": 70, "unit": "cm", "system": UCUM, "code": "cm"}),
        "business-rule", "Observation.valueQuantity.code", "warning")
    add("vital sign unit that is not UCUM",
        broken(HEART_RATE, valueQuantity__system="http://example.org/units"),
        "business-rule", "Observation.valueQuantity.system", "warning")
    add("diastolic above systolic",
        broken(BLOOD_PRESSURE, component=[_component("8480-6", 70), _component("8462-4", 120)]),
        "business-rule", "Observation.component", "warning")
    add("birth date in the future", broken(PATIENT, birthDate="2999-01-01"), "business-rule",
        "Patient.birthDate", "warning")
    return c


CASES = _cases()
