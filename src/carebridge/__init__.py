"""carebridge: an open-source, FHIR-native health data platform.

Layers (imports point down only): ``cli``/``app`` -> ``api`` -> ``services`` ->
``security``/``events`` -> ``storage`` -> ``fhir``. See ARCHITECTURE.md.
"""

__version__ = "0.1.0"
