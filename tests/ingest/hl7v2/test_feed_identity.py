"""A feed writes with the interface role under the server's SMART policy, not as the system.

The server (``carebridge serve`` without ``--insecure-dev``) decides every write with
``SmartPolicy``; an MLLP sender is the least-privilege identity ``hl7v2:<MSH-3>`` with the
``interface`` role (create, read, update, search; never delete; never AuditEvent). Its
messages must still map and commit.
"""

from __future__ import annotations

import pytest
from tests.ingest.hl7v2.conftest import ack_fields, sample, stored

from carebridge.fhir.errors import Forbidden
from carebridge.ingest.hl7v2.processor import Hl7Processor, feed_caller
from carebridge.security.policy import Action, SmartPolicy
from carebridge.services import ResourceService
from carebridge.services.validation import WriteValidation
from carebridge.storage import Repository


@pytest.mark.parametrize("name", ["A01-Admit-Patient-v2.8.txt",
                                  "R01-Lab-Panel-Various-Blood-Tests-v2.3.1.txt",
                                  "V04-new-admin-v2.5.1.txt"])
def test_feed_commits_under_the_smart_policy(repository: Repository, name: str) -> None:
    processor = Hl7Processor(ResourceService(
        repository, policy=SmartPolicy(), validation=WriteValidation(repository, "strict")))
    ack = ack_fields(processor.handle_frame(sample(name)))
    assert ack["MSA"][1] == "AA", ack
    assert stored(repository, "Patient")


def test_feed_identity_is_least_privilege() -> None:
    caller = feed_caller("LAB")
    assert caller.subject == "hl7v2:LAB" and "system" not in caller.roles
    policy = SmartPolicy()
    policy.authorize(caller, Action.CREATE, "Observation")
    policy.authorize(caller, Action.UPDATE, "Patient")
    with pytest.raises(Forbidden):
        policy.authorize(caller, Action.DELETE, "Patient")
    with pytest.raises(Forbidden):
        policy.authorize(caller, Action.READ, "AuditEvent")
