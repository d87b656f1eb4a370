"""Server-assigned ids: UUID version 7 (RFC 9562), time-ordered, unique, valid FHIR ids."""

from __future__ import annotations

import threading
import time
import uuid

from carebridge.fhir.resource import ID_PATTERN, new_id


def test_ids_are_version_7_uuids_with_the_creation_time() -> None:
    before = time.time_ns() // 1_000_000
    made = new_id()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(made)
    assert str(parsed) == made and ID_PATTERN.fullmatch(made)
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert before <= parsed.int >> 80 <= after + 1  # unix_ts_ms, the first 48 bits


def test_ids_increase_strictly_even_within_one_millisecond() -> None:
    ids = [new_id() for _ in range(20_000)]  # many share a millisecond
    assert len({uuid.UUID(i).int >> 80 for i in ids}) < len(ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_ids_made_by_threads_at_once_are_unique() -> None:
    made: list[list[str]] = [[] for _ in range(4)]

    def work(out: list[str]) -> None:
        out.extend(new_id() for _ in range(5_000))

    threads = [threading.Thread(target=work, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every)
    assert all(out == sorted(out) for out in made)
