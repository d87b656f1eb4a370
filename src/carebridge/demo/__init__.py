"""Sample data for `carebridge demo` (Synthea, Apache-2.0; see data/NOTICE)."""
