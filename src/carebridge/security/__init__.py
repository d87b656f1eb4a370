"""Security: identities, access policy, audit, crypto."""
