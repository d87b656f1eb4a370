-- Reference parameters that R4 defines as another parameter narrowed to one target type
-- (search.aliases.restricted: Observation patient = subject narrowed to Patient, ...) are
-- answered from the other parameter's rows and no longer stored. Their old rows go here
-- (otherwise they would stay until each resource's next write). tests/search/
-- test_aliases.py checks this list against the definitions.

DELETE FROM idx_reference WHERE param = 'location' AND resource_type IN (
    'Appointment', 'AppointmentResponse');
DELETE FROM idx_reference WHERE param = 'patient' AND resource_type IN (
    'Account', 'Appointment', 'AppointmentResponse', 'Basic', 'CarePlan', 'CareTeam',
    'ChargeItem', 'ClinicalImpression', 'Communication', 'CommunicationRequest',
    'Composition', 'Condition', 'Contract', 'DeviceRequest', 'DiagnosticReport',
    'DocumentManifest', 'DocumentReference', 'Encounter', 'Flag', 'Goal',
    'GuidanceResponse', 'ImagingStudy', 'Invoice', 'List', 'MeasureReport', 'Media',
    'MedicationAdministration', 'MedicationDispense', 'MedicationRequest',
    'MedicationStatement', 'Observation', 'Person', 'Procedure', 'Provenance',
    'QuestionnaireResponse', 'RequestGroup', 'RiskAssessment', 'ServiceRequest', 'Specimen',
    'Task');
DELETE FROM idx_reference WHERE param = 'practitioner' AND resource_type IN (
    'Appointment', 'AppointmentResponse', 'Encounter', 'Person');
DELETE FROM idx_reference WHERE param = 'relatedperson' AND resource_type IN (
    'Person');
