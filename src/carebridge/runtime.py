"""Garbage-collector settings for carebridge's long-running processes (server and workers).

CPython's cyclic collector runs a young collection every 700 net allocations of container
objects and, every so often, a full collection that visits every tracked object
(https://docs.python.org/3.11/library/gc.html, ``set_threshold``). A carebridge server holds a
large heap that lives as long as the process (FHIR definitions, compiled validators and
extractors, the search registry) and turns each request into many short-lived containers (one
Synthea bundle parses into several hundred thousand dicts and lists). With the defaults, the
full collections kept walking the long-lived heap: an HTTP ingest of 80 Synthea bundles spent
1.44 s of its 10.4 s in the collector, 1.2 s of it in 12 full collections.

:func:`settle` is called once a process has built its application: ``gc.freeze()`` moves
everything alive at that point out of the collector's generations (it is never freed anyway),
and higher thresholds make young collections rarer and full ones rarer still. The same ingest
then spent 0.1 s in the collector and ran 18 % faster (2,339 -> 2,760 resources/s). Reference
cycles are still collected; they are only found later, and the server's memory is measured by
``bench/ingest.py --all``.
"""

from __future__ import annotations

import gc

# (young, middle, old): a young collection per 50,000 net container allocations (default 700),
# a middle one per 50 young (default 10), a full one considered per 100 middle (default 10).
THRESHOLDS = (50_000, 50, 100)


def settle() -> None:
    """Collect once, freeze what is alive (startup state) and raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
