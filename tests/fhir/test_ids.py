"""Server-assigned ids: UUID version 7 (RFC 9562), time-ordered, unique, valid FHIR ids."""

from __future__ import annotations

import os
import threading
import time
import uuid

from carebridge.fhir.resource import _ENTROPY, ID_PATTERN, new_id, random_uuid


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


def test_random_uuids_are_version_4_and_do_not_repeat() -> None:
    made = [random_uuid() for _ in range(3_000)]  # several refills of the 4 KiB buffer
    assert all((u.version, u.variant) == (4, uuid.RFC_4122) for u in made)
    assert len(set(made)) == len(made)


def test_random_bits_stay_in_range_and_use_every_bit() -> None:
    values = [_ENTROPY.bits(11) for _ in range(4_000)]
    assert all(0 <= v < 2**11 for v in values)
    assert max(values) >= 2**10 and min(values) < 2**5  # the top bit is not lost
    wide = [_ENTROPY.bits(62) for _ in range(200)]
    assert all(0 <= v < 2**62 for v in wide) and max(wide) >= 2**61


def test_a_forked_child_never_reuses_its_parents_random_bits() -> None:
    _ENTROPY.take(1)  # the buffer holds bits the parent has not used yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it draws next, then leave at once
        os.write(write, _ENTROPY.take(16))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16 and child != _ENTROPY.take(16)
