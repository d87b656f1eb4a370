"""HL7 v2 feeds to FHIR over MLLP.

- :mod:`~carebridge.ingest.hl7v2.parsing`: bytes -> messages (python-hl7, charsets, batches)
- mappers: :mod:`~.adt`, :mod:`~.results`, :mod:`~.immunization` (v2-to-FHIR IG tables)
- :mod:`~carebridge.ingest.hl7v2.processor`: one message -> one transaction bundle through
  the service layer, archived in the same database transaction; ACK after commit
- :mod:`~carebridge.ingest.hl7v2.store`: message archive and error queue
- :mod:`~carebridge.ingest.hl7v2.mllp`: the asyncio MLLP listener
"""

from carebridge.ingest.hl7v2.errors import Hl7Error, MessageError, MessageRejected
from carebridge.ingest.hl7v2.processor import Hl7Processor, Outcome
from carebridge.ingest.hl7v2.store import MessageCipher, MessageStore, Plaintext

__all__ = ["Hl7Error", "Hl7Processor", "MessageCipher", "MessageError", "MessageRejected",
           "MessageStore", "Outcome", "Plaintext"]
