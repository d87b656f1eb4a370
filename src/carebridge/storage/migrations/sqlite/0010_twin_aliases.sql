-- Parameters that share another's expression outright (search.aliases.twins: Patient
-- phonetic is Patient.name, as name is, ...) are answered from the other's rows and no
-- longer stored. Their old rows go here (otherwise they would stay until each resource's
-- next write). tests/search/test_aliases.py checks this list against the definitions.

DELETE FROM idx_reference WHERE param = 'message' AND resource_type IN ('Bundle');
DELETE FROM idx_reference WHERE param = 'patient' AND resource_type IN (
    'Coverage', 'DeviceUseStatement', 'ResearchSubject');
DELETE FROM idx_reference WHERE param = 'source' AND resource_type IN ('Linkage');
DELETE FROM idx_reference WHERE param = 'subject' AND resource_type IN ('EnrollmentRequest');
DELETE FROM idx_string WHERE param = 'phonetic' AND resource_type IN (
    'Patient', 'Person', 'Practitioner', 'RelatedPerson');
DELETE FROM idx_token WHERE param = 'fhirversion' AND resource_type IN ('CapabilityStatement');
DELETE FROM idx_uri WHERE param = 'system' AND resource_type IN ('CodeSystem');
