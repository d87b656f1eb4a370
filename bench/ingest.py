"""Benchmark: transaction ingest over HTTP and read by id, each against a floor.

What is measured (one run, on SQLite and/or PostgreSQL, server + database + client on the
same machine):

1. **Transaction ingest.** A fresh database, the real server (``carebridge serve`` in its own
   process, via :class:`carebridge.testing.ServerProcess`), and one keep-alive HTTP client that
   POSTs Synthea patient bundles (``type: transaction``, POST entries with ``urn:uuid:``
   references) to ``/fhir`` one after the other. The figure is resources stored per second,
   from the first request to the last response; every response must be 200 with every entry
   ``201 Created``.

   *Floor:* the same resource JSON (each entry's ``resource``, serialized with orjson) inserted
   straight into the same kind of database with the driver, one transaction per bundle:
   SQLite ``executemany`` into ``(resource_type, id, body BLOB)`` in a fresh WAL file with the
   product's pragmas (``synchronous=FULL``); PostgreSQL ``executemany`` into
   ``(resource_type, id, body jsonb)`` in a fresh database of the same server (started with
   ``durable=True``: fsync on). The server does much more per resource (parse, check, rewrite
   references, add meta, two rows: current + history, HTTP), so the target is a small ratio.

2. **Read by id.** After the ingest, ``--reads`` random ids of stored resources (from the
   transaction responses' locations) are read with ``GET /fhir/{type}/{id}``, one after the
   other on one keep-alive client; the latency of each is recorded and reported as p50/p99,
   plus requests per second. Each id is read once untimed first (that is how the floor gets
   its bytes), so this is a warm read.

   *Floor:* a bare ASGI callable that answers the same paths with the same bytes (body, ETag,
   Last-Modified, Content-Type, preloaded in a dict), served by uvicorn in its own process
   exactly as ``carebridge serve`` does (``uvicorn.run(app, host, port, log_level="warning",
   access_log=False)``: uvloop + httptools), read the same way in the same order. Product and
   floor reads alternate in chunks of 100 so both see the same background load.

3. **Server memory** (``--all``): VmRSS of the server process after loading every bundle
   (from ``/proc/<pid>/status``), with the peak (VmHWM).

Targets (from the issue, for a 2-core machine): ingest at least 0.03 of the SQLite floor and
0.07 of the PostgreSQL floor; read p50 under 2 ms and at least 0.5 of the bare-endpoint rate;
server RSS under 250 MB after loading all of ``../shared/data/synthea-r4``. Marks are
informative: the exit status is 0 unless the benchmark itself fails (e.g. a non-201 entry).

Run::

    .venv/bin/python bench/ingest.py                      # 20 patients, both backends
    .venv/bin/python bench/ingest.py --backend sqlite --all
    .venv/bin/python bench/ingest.py --patients 40 --reads 5000 --json var/bench.json

The data are ``../shared/data/synthea-r4`` (relative to the repository root) by default; if
that folder is absent the few sample bundles in ``src/carebridge/demo/data`` are used instead.
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import platform
import random
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson
import psycopg

from carebridge.testing import ServerProcess, ThrowawayPostgres, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "synthea-r4"
SAMPLE_DATA = REPO_ROOT / "src" / "carebridge" / "demo" / "data"
INFORMATION_BUNDLES = ("hospitalInformation", "practitionerInformation")
FHIR_JSON = "application/fhir+json"

INGEST_TARGETS = {"sqlite": 0.03, "postgresql": 0.07}
READ_P50_TARGET_MS = 2.0
READ_RATE_TARGET = 0.5
RSS_TARGET_MB = 250.0
WARMUP_READS = 200
READ_CHUNK = 100
FLOOR_ROUNDS = 3
SEED = 20261122

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BenchError(RuntimeError):
    """The benchmark could not measure what it should (a failed request, a dead server)."""


# --------------------------------------------------------------------------- data


@dataclass
class Bundle:
    """One transaction bundle: the bytes to POST and the rows the floor inserts."""

    name: str
    raw: bytes
    rows: list[tuple[str, str, bytes]]  # (resource_type, id, resource JSON)

    @property
    def entries(self) -> int:
        return len(self.rows)


def _read_bundle(path: Path) -> Bundle:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    document = orjson.loads(raw)
    if document.get("resourceType") != "Bundle" or document.get("type") != "transaction":
        raise BenchError(f"{path} is not a transaction bundle")
    rows = []
    for entry in document.get("entry") or []:
        resource = entry["resource"]
        # The server assigns fresh ids; so does the floor (same shape: a UUID).
        rows.append((resource["resourceType"], str(uuid.uuid4()), orjson.dumps(resource)))
    name = path.name.removesuffix(".gz").removesuffix(".json")
    return Bundle(name, raw, rows)


def find_bundles(data_dir: Path, patients: int, everything: bool) -> tuple[list[Path], str]:
    """The bundle files to load, information bundles first, and a note on where they are."""
    note = os.path.relpath(data_dir)
    if not data_dir.is_dir():
        note = (f"{data_dir} not found: using the sample bundles in "
                f"{SAMPLE_DATA.relative_to(REPO_ROOT)} instead")
        data_dir = SAMPLE_DATA

    def stem(path: Path) -> str:
        return path.name.removesuffix(".gz").removesuffix(".json")

    files = sorted(p for p in data_dir.iterdir() if p.name.endswith((".json", ".json.gz")))
    patient_files = [p for p in files if stem(p).startswith("patient-")]
    if not patient_files:
        raise BenchError(f"no patient-*.json bundles in {data_dir}")
    if everything:
        info = [p for name in INFORMATION_BUNDLES for p in files if stem(p) == name]
        return info + patient_files, note
    if patients > len(patient_files):
        note += f" (only {len(patient_files)} patient bundles, not {patients})"
    return patient_files[:patients], note


# --------------------------------------------------------------------------- figures


@dataclass
class Rate:
    count: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else math.inf

    def as_json(self) -> dict[str, float]:
        return {"count": self.count, "seconds": round(self.seconds, 4),
                "per_second": round(self.per_second, 1)}


@dataclass
class Latencies:
    nanoseconds: list[int]
    seconds: float

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.nanoseconds)
        rank = max(1, math.ceil(fraction * len(ordered)))
        return ordered[rank - 1] / 1e6

    @property
    def per_second(self) -> float:
        return len(self.nanoseconds) / self.seconds

    def as_json(self) -> dict[str, float]:
        return {"requests": len(self.nanoseconds), "seconds": round(self.seconds, 4),
                "per_second": round(self.per_second, 1),
                "p50_ms": round(self.percentile_ms(0.50), 3),
                "p90_ms": round(self.percentile_ms(0.90), 3),
                "p99_ms": round(self.percentile_ms(0.99), 3),
                "max_ms": round(max(self.nanoseconds) / 1e6, 3)}


@dataclass
class BackendResult:
    backend: str
    ingest: Rate | None = None
    ingest_floor: Rate | None = None
    reads: Latencies | None = None
    reads_floor: Latencies | None = None
    memory_kb: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend}
        if self.ingest and self.ingest_floor:
            ratio = self.ingest.per_second / self.ingest_floor.per_second
            target = INGEST_TARGETS[self.backend]
            out["ingest"] = {"product": self.ingest.as_json(),
                             "floor": self.ingest_floor.as_json(),
                             "ratio": round(ratio, 4), "target_ratio": target,
                             "meets_target": ratio >= target}
        if self.reads and self.reads_floor:
            ratio = self.reads.per_second / self.reads_floor.per_second
            out["read_by_id"] = {
                "product": self.reads.as_json(), "floor": self.reads_floor.as_json(),
                "ratio": round(ratio, 4), "target_ratio": READ_RATE_TARGET,
                "target_p50_ms": READ_P50_TARGET_MS,
                "meets_target": ratio >= READ_RATE_TARGET
                and self.reads.percentile_ms(0.5) < READ_P50_TARGET_MS,
            }
        if self.memory_kb:
            out["server_memory_kb"] = dict(self.memory_kb)
        return out


def _mark(ok: bool) -> str:
    return "PASS" if ok else "BELOW"


def proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


# --------------------------------------------------------------------------- HTTP ingest


def _post_all(base_url: str, bundles: Sequence[Bundle], concurrency: int) -> tuple[float, list[
        tuple[Bundle, int, bytes]]]:
    """POST every bundle (``concurrency`` keep-alive clients in threads, each sequential).

    Returns the wall time from the first request to the last response, and the raw answers
    (checked afterwards so that checking costs no time in the measured window).
    """
    answers: list[tuple[Bundle, int, bytes]] = []
    errors: list[BaseException] = []
    next_index = iter(range(len(bundles)))
    lock = threading.Lock()
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    clients = [httpx2.Client(timeout=600) for _ in range(concurrency)]

    def work(client: httpx2.Client) -> None:
        try:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                bundle = bundles[index]
                reply = client.post(base_url, content=bundle.raw, headers=headers)
                with lock:
                    answers.append((bundle, reply.status_code, reply.content))
        except BaseException as exc:
            errors.append(exc)

    try:
        for client in clients:  # open each connection before the clock starts
            client.get(f"{base_url}/metadata").raise_for_status()
        started = time.perf_counter()
        if concurrency == 1:
            work(clients[0])
        else:
            threads = [threading.Thread(target=work, args=(c,)) for c in clients]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        seconds = time.perf_counter() - started
    finally:
        for client in clients:
            client.close()
    if errors:
        raise BenchError(f"posting bundles failed: {errors[0]!r}") from errors[0]
    return seconds, answers


def ingest_over_http(base_url: str, bundles: Sequence[Bundle],
                     concurrency: int) -> tuple[Rate, list[str]]:
    """POST the bundles; the figure and the ``Type/id`` of every stored resource."""
    seconds, answers = _post_all(base_url, bundles, concurrency)
    stored: list[str] = []
    for bundle, status, content in answers:
        if status != 200:
            raise BenchError(f"{bundle.name}: HTTP {status}: {content[:600]!r}")
        entries = orjson.loads(content).get("entry") or []
        if len(entries) != bundle.entries:
            raise BenchError(f"{bundle.name}: {len(entries)} response entries for "
                             f"{bundle.entries} requests")
        for index, entry in enumerate(entries):
            response = entry.get("response") or {}
            if not str(response.get("status", "")).startswith("201"):
                raise BenchError(f"{bundle.name}: entry {index} answered {response!r}")
            location = response["location"]  # Type/id/_history/1
            stored.append("/".join(location.split("/")[:2]))
    return Rate(len(stored), seconds), stored


# --------------------------------------------------------------------------- ingest floors


def sqlite_floor(bundles: Sequence[Bundle], path: Path) -> Rate:
    """executemany into a fresh WAL file with the product's pragmas, a commit per bundle."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("CREATE TABLE resource_floor (resource_type TEXT NOT NULL,"
                     " id TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (resource_type, id))")
        started = time.perf_counter()
        for bundle in bundles:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO resource_floor VALUES (?, ?, ?)", bundle.rows)
            conn.execute("COMMIT")
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return Rate(sum(b.entries for b in bundles), seconds)


def postgres_floor(bundles: Sequence[Bundle], url: str) -> Rate:
    """executemany into a jsonb column of a fresh database, a transaction per bundle."""
    batches = [[(t, i, body.decode()) for t, i, body in b.rows] for b in bundles]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE resource_floor (resource_type TEXT NOT NULL,"
                     " id TEXT NOT NULL, body JSONB NOT NULL, PRIMARY KEY (resource_type, id))")
        started = time.perf_counter()
        for rows in batches:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany("INSERT INTO resource_floor VALUES (%s, %s, %s::jsonb)", rows)
        seconds = time.perf_counter() - started
    return Rate(sum(b.entries for b in bundles), seconds)


# --------------------------------------------------------------------------- reads


Answer = tuple[bytes, list[tuple[bytes, bytes]]]  # body, headers as the bare endpoint sends


def fetch_answers(origin: str, paths: Sequence[str]) -> dict[str, Answer]:
    """What the product answers for each path: the bytes the bare endpoint will send."""
    answers: dict[str, Answer] = {}
    with httpx2.Client(base_url=origin, timeout=60, headers={"Accept": FHIR_JSON}) as client:
        for path in dict.fromkeys(paths):
            reply = client.get(path)
            if reply.status_code != 200:
                raise BenchError(f"GET {path}: HTTP {reply.status_code}: {reply.content[:300]!r}")
            answers[path] = (reply.content, [
                (name.encode(), reply.headers[name].encode())
                for name in ("content-type", "etag", "last-modified") if name in reply.headers
            ])
    return answers


def _timed_reads(client: httpx2.Client, paths: Sequence[str], latencies: list[int]) -> int:
    """GET each path in turn, appending each latency; returns the wall time in ns."""
    clock = time.perf_counter_ns
    started = clock()
    for path in paths:
        before = clock()
        reply = client.get(path)
        latencies.append(clock() - before)
        if reply.status_code != 200:
            raise BenchError(f"GET {path}: HTTP {reply.status_code}: {reply.content[:300]!r}")
    return clock() - started


def time_reads(product_origin: str, bare_origin: str,
               paths: Sequence[str]) -> tuple[Latencies, Latencies]:
    """Read ``paths`` from the product and from the bare endpoint, interleaved.

    Both servers run at once (an idle one costs nothing); the reads alternate in chunks of
    READ_CHUNK, each side on its own keep-alive client, so that both see the same background
    load. Both are warmed up first.
    """
    product_ns: list[int] = []
    bare_ns: list[int] = []
    wall = {"product": 0, "bare": 0}
    headers = {"Accept": FHIR_JSON}
    with (httpx2.Client(base_url=product_origin, timeout=60, headers=headers) as product,
          httpx2.Client(base_url=bare_origin, timeout=60, headers=headers) as bare):
        _timed_reads(product, paths[:WARMUP_READS], [])
        _timed_reads(bare, paths[:WARMUP_READS], [])
        for number, first in enumerate(range(0, len(paths), READ_CHUNK)):
            chunk = paths[first:first + READ_CHUNK]
            sides = [("product", product, product_ns), ("bare", bare, bare_ns)]
            if number % 2:
                sides.reverse()
            for name, client, latencies in sides:
                wall[name] += _timed_reads(client, chunk, latencies)
    return (Latencies(product_ns, wall["product"] / 1e9),
            Latencies(bare_ns, wall["bare"] / 1e9))


def bare_application(answers: dict[str, Answer]) -> Callable[[Scope, Receive, Send],
                                                             Awaitable[None]]:
    """A raw ASGI callable: the preloaded answer for a known path, else an empty 404."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        found = answers.get(scope["path"])
        if found is None:  # "/" answers 200 (the readiness probe), anything else 404
            status = 200 if scope["path"] == "/" else 404
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        body, headers = found
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def serve_bare(answers_file: Path, port: int) -> None:
    """Entry point of the bare-endpoint process (``--serve-bare``)."""
    import uvicorn

    stored = orjson.loads(answers_file.read_bytes())
    answers: dict[str, Answer] = {
        path: (body.encode(), [(k.encode(), v.encode()) for k, v in headers])
        for path, (body, headers) in stored.items()
    }
    # The same call as `carebridge serve` (cli._serve).
    uvicorn.run(bare_application(answers), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


class BareServer:
    """The bare endpoint in its own process, like the product server."""

    def __init__(self, answers: dict[str, Answer], directory: Path) -> None:
        self.answers_file = directory / "bare-answers.json"
        self.answers_file.write_bytes(orjson.dumps({
            path: [body.decode(), [[k.decode(), v.decode()] for k, v in headers]]
            for path, (body, headers) in answers.items()
        }))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BareServer:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-bare",
             str(self.answers_file), "--port", str(self.port)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError("the bare endpoint exited at startup")
            try:
                with urllib.request.urlopen(f"{self.origin}/", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise BenchError("the bare endpoint did not answer in time")

    def __exit__(self, *exc_info: object) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --------------------------------------------------------------------------- one backend


def run_backend(backend: str, bundles: Sequence[Bundle], args: argparse.Namespace,
                pg: ThrowawayPostgres | None, workdir: Path) -> BackendResult:
    result = BackendResult(backend)
    total = sum(b.entries for b in bundles)
    print(f"\n== {backend}: {len(bundles)} bundles, {total} resources, validation"
          f" {args.validation} ==", flush=True)

    # Floor first, each round on a fresh database of the same kind (same PostgreSQL server);
    # the median round counts (a round is short, so one alone is noisy).
    rounds: list[Rate] = []
    for round_ in range(FLOOR_ROUNDS):
        if backend == "sqlite":
            rounds.append(sqlite_floor(bundles, workdir / f"floor-{round_}.db"))
        else:
            assert pg is not None
            name = f"bench_floor_{round_}"
            rounds.append(postgres_floor(bundles, pg.create_database(name)))
            pg.drop_database(name)
    result.ingest_floor = sorted(rounds, key=lambda r: r.seconds)[len(rounds) // 2]
    if backend == "sqlite":
        server_url = f"sqlite:///{workdir / 'carebridge.db'}"
    else:
        assert pg is not None
        server_url = pg.create_database("bench_carebridge")

    with ServerProcess(server_url, env={"CAREBRIDGE_VALIDATION": args.validation}) as server:
        result.ingest, stored = ingest_over_http(server.base_url, bundles, args.concurrency)
        result.memory_kb = {f"after_ingest_{k}": v for k, v in proc_memory_kb(server.pid).items()}
        rng = random.Random(SEED)
        picked = (rng.sample(stored, args.reads) if args.reads <= len(stored)
                  else rng.choices(stored, k=args.reads))
        paths = [f"/fhir/{ref}" for ref in picked]
        origin = server.base_url.removesuffix("/fhir")
        with BareServer(fetch_answers(origin, paths), workdir) as bare:
            result.reads, result.reads_floor = time_reads(origin, bare.origin, paths)
        result.memory_kb |= {f"after_reads_{k}": v
                             for k, v in proc_memory_kb(server.pid).items()}

    report_backend(result, args.all, args.concurrency)
    return result


def report_backend(result: BackendResult, everything: bool, concurrency: int) -> None:
    ingest, floor = result.ingest, result.ingest_floor
    assert ingest is not None and floor is not None
    ratio = ingest.per_second / floor.per_second
    target = INGEST_TARGETS[result.backend]
    floor_kind = ("executemany, WAL, synchronous=FULL" if result.backend == "sqlite"
                  else "executemany into jsonb, fsync on")
    clients = "1 client" if concurrency == 1 else f"{concurrency} clients"
    print(f"  ingest over HTTP   {ingest.per_second:10,.0f} resources/s"
          f"  ({ingest.count} in {ingest.seconds:.2f} s; {clients})")
    print(f"  floor (raw insert) {floor.per_second:10,.0f} rows/s"
          f"       ({floor.count} in {floor.seconds:.2f} s; {floor_kind};"
          f" median of {FLOOR_ROUNDS})")
    print(f"  ratio              {ratio:10.3f}   target >= {target}  {_mark(ratio >= target)}")

    reads, bare = result.reads, result.reads_floor
    assert reads is not None and bare is not None
    read_ratio = reads.per_second / bare.per_second
    p50 = reads.percentile_ms(0.5)
    print(f"  read by id         p50 {p50:6.3f} ms  p99 {reads.percentile_ms(0.99):6.3f} ms"
          f"  {reads.per_second:8,.0f} req/s  ({len(reads.nanoseconds)} reads)")
    print(f"  bare ASGI endpoint p50 {bare.percentile_ms(0.5):6.3f} ms"
          f"  p99 {bare.percentile_ms(0.99):6.3f} ms  {bare.per_second:8,.0f} req/s")
    print(f"  ratio              {read_ratio:10.3f}   target >= {READ_RATE_TARGET}"
          f"  {_mark(read_ratio >= READ_RATE_TARGET)};"
          f" p50 target < {READ_P50_TARGET_MS} ms  {_mark(p50 < READ_P50_TARGET_MS)}")

    memory = result.memory_kb
    rss = memory.get("after_ingest_VmRSS", 0) / 1024
    peak = memory.get("after_reads_VmHWM", 0) / 1024
    after_reads = memory.get("after_reads_VmRSS", 0) / 1024
    line = (f"  server memory      RSS {rss:.0f} MB after ingest, {after_reads:.0f} MB after"
            f" reads, peak {peak:.0f} MB")
    if everything:
        line += f"   target < {RSS_TARGET_MB:.0f} MB  {_mark(rss < RSS_TARGET_MB)}"
    print(line, flush=True)


# --------------------------------------------------------------------------- main


def _source_version() -> str:
    """``git describe`` of the working tree (``-dirty`` when it has uncommitted changes)."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True,
            text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return described.stdout.strip() or "unknown"


def _command_line() -> str:
    python = sys.executable
    relative = os.path.relpath(python)
    if not relative.startswith(".."):
        python = relative
    return shlex.join([python, *sys.argv])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Transaction ingest and read-by-id benchmark, each with its floor.")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--patients", type=int, default=20, metavar="N",
                        help="patient bundles to load (default 20)")
    parser.add_argument("--all", action="store_true",
                        help="load every patient bundle plus the hospital and practitioner"
                             " bundles, and check the server's memory against its target")
    parser.add_argument("--reads", type=int, default=2000, metavar="N",
                        help="timed reads by id (default 2000)")
    parser.add_argument("--concurrency", type=int, default=1, metavar="K",
                        help="HTTP clients posting bundles in parallel (default 1)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR",
                        help="folder of Synthea bundles (default ../shared/data/synthea-r4)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write figures here")
    parser.add_argument("--validation", choices=("strict", "warn", "off"), default="strict",
                        help="the server's validation mode (default strict); run with off "
                             "too to see what validation adds to ingest")
    parser.add_argument("--serve-bare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare is not None and args.port is None:
        parser.error("--serve-bare needs --port")
    if args.patients < 1 or args.reads < 1 or args.concurrency < 1:
        parser.error("--patients, --reads and --concurrency must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare is not None:
        serve_bare(args.serve_bare, args.port)
        return 0

    print(f"rerun: {_command_line()}")
    files, note = find_bundles(args.data, args.patients, args.all)
    print(f"data: {note}")
    bundles = [_read_bundle(path) for path in files]
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    print(f"source: {_source_version()}")
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()},"
          f" SQLite {sqlite3.sqlite_version}, psycopg {psycopg.__version__};"
          f" server, database and client share the machine")
    load = os.getloadavg()[0]
    print(f"load average {load:.2f} before the run"
          + ("  (the machine was busy recently: figures may be noisy)" if load > 0.5 else ""))
    started = time.perf_counter()
    results: list[BackendResult] = []
    pg: ThrowawayPostgres | None = None
    try:
        if "postgresql" in backends:
            pg = ThrowawayPostgres(durable=True).start()
            with pg.connect() as conn:
                row = conn.execute("SHOW server_version").fetchone()
            print(f"PostgreSQL {row[0] if row else '?'} (throwaway, fsync on)")
        for backend in backends:
            with tempfile.TemporaryDirectory(prefix=f"carebridge-bench-{backend}-") as tmp:
                results.append(run_backend(backend, bundles, args, pg, Path(tmp)))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if pg is not None:
            pg.stop()
    print(f"\ntotal {time.perf_counter() - started:.0f} s;"
          f" load average {os.getloadavg()[0]:.2f} after the run")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps({
            "command": _command_line(),
            "data": note,
            "bundles": [b.name for b in bundles],
            "resources": sum(b.entries for b in bundles),
            "source": _source_version(),
            "cpus": os.cpu_count(),
            "load_average_before": round(load, 2),
            "concurrency": args.concurrency,
            "results": [r.as_json() for r in results],
        }, option=orjson.OPT_INDENT_2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
