"""Ways in from outside FHIR REST: HL7 v2 over MLLP (``hl7v2``), the device gateway (``devices``).

Each adapter turns its wire format into calls on the service layer, so validation, authorization,
audit and events apply exactly as they do to REST writes.
"""
