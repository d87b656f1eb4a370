"""Data quality beyond the schema: rules applied on write (warnings) and the store report."""
