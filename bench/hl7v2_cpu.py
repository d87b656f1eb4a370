"""Benchmark: the CPU one HL7 v2 message costs in process, as time and as instructions.

``bench/hl7v2.py`` measures the product as deployed (MLLP, several processes, fsync); its
figure moves by 10-30 % within an hour on this shared 2-core VM, so a change worth a few per
cent cannot be seen there. This file measures the part those few per cent come from: the same
ADT/ORU mix (``hl7v2.messages``) parsed, mapped, validated, indexed and committed by
:class:`~carebridge.ingest.hl7v2.processor.Hl7Processor` in groups, as the group committer
runs it, in this process, on a fresh SQLite database (``synchronous=FULL``), no network.

Figures:

- **CPU per message** (process CPU time over the measured messages, after a warm-up that
  compiles the extractors and validators), and the **floor**: parsing the same messages only
  (``read_frame``), with the ratio between them.
- **Instructions per message** with ``--instructions``: the run is repeated under valgrind's
  callgrind with instrumentation switched on only around the measured messages
  (``callgrind_control -i on|off``). Instruction counts do not depend on the VM's speed of the
  moment: two runs of the same code agree within 0.1 %, so a 1 % change is visible.
- ``--against REV`` runs the same measurement for a git revision (checked out in a temporary
  worktree) at the same time as the working tree's, one process per core, and prints both:
  an A/B in which both sides see the same machine.

Run::

    .venv/bin/python bench/hl7v2_cpu.py                          # CPU, 3,000 messages
    .venv/bin/python bench/hl7v2_cpu.py --instructions --messages 200 --against HEAD~3
    .venv/bin/python bench/hl7v2_cpu.py --instructions --messages 200 --encrypted

``--encrypted`` runs with encryption at rest (a master key made for the run), as deployed;
the audit trail, written by the MLLP listener, is not part of this pipeline.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARM_UP = 300  # messages before the clock: first use compiles extractors and validators


def measure(count: int, group: int, toggle_callgrind: bool) -> None:
    """Run in a child process (the code under test is whatever ``carebridge`` imports)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hl7v2 import messages  # this directory's feed benchmark: the same message mix

    from carebridge.app import build_stores
    from carebridge.config import Settings
    from carebridge.ingest.hl7v2.parsing import read_frame
    from carebridge.ingest.hl7v2.processor import Hl7Processor
    from carebridge.runtime import settle

    with tempfile.TemporaryDirectory(prefix="carebridge-bench-hl7cpu-") as tmp:
        stores = build_stores(Settings(database_url=f"sqlite:///{tmp}/cb.db",
                                       insecure_dev=True))
        processor = Hl7Processor(stores.service)
        data = messages(WARM_UP + count)
        settle()  # the server's garbage-collector settings (carebridge.runtime)

        def commit(batch: list[bytes]) -> None:
            items = [processor.item(read_frame(m).messages[0][1]) for m in batch]
            for outcome in processor.commit_group(items):
                if outcome.ack_code != "AA":
                    raise SystemExit(f"not accepted: {outcome.ack!r}")

        def parse_seconds() -> float:
            started = time.process_time()
            for payload in work:
                read_frame(payload)
            return time.process_time() - started

        for start in range(0, WARM_UP, group):
            commit(data[start:start + group])
        work = data[WARM_UP:]
        if toggle_callgrind:
            subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())],
                           check=True, capture_output=True)
        started = time.process_time()
        for start in range(0, count, group):
            commit(work[start:start + group])
        seconds = time.process_time() - started
        if toggle_callgrind:
            subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())],
                           check=True, capture_output=True)
        stores.repository.close()
        floor = min(parse_seconds() for _ in range(3))
    print(f"RESULT cpu_ms={seconds / count * 1000:.4f} floor_ms={floor / count * 1000:.4f}",
          flush=True)


def child(source: Path, args: argparse.Namespace, out_file: Path | None) -> subprocess.Popen[str]:
    """Start one measurement of the code under ``source`` (src/ of a tree)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child",
               "--messages", str(args.messages), "--group", str(args.group)]
    if out_file is not None:
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={out_file}", *command, "--toggle-callgrind"]
    env = {**os.environ, "PYTHONPATH": str(source), "PYTHONHASHSEED": "0"}
    if args.encrypted:  # bodies, history and the message archive sealed (AES-256-GCM)
        env["CAREBRIDGE_MASTER_KEY"] = args.encrypted
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def report(label: str, process: subprocess.Popen[str], out_file: Path | None,
           count: int) -> dict[str, float]:
    stdout, _ = process.communicate()
    line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
    if process.returncode != 0 or line is None:
        raise SystemExit(f"{label}: the measurement failed (exit {process.returncode})")
    figures = {k: float(v) for k, v in (p.split("=") for p in line.split()[1:])}
    text = (f"{label:>10}: {figures['cpu_ms']:.3f} ms CPU per message, floor (parse only)"
            f" {figures['floor_ms']:.3f} ms, ratio {figures['cpu_ms'] / figures['floor_ms']:.1f}x")
    if out_file is not None:
        totals = next(x for x in out_file.read_text().splitlines() if x.startswith("totals:"))
        figures["instructions"] = int(totals.split()[1]) / count
        # (times under valgrind say nothing about the product)
        text = f"{label:>10}: {figures['instructions'] / 1e6:.3f} M instructions per message"
    print(text, flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000, metavar="N")
    parser.add_argument("--group", type=int, default=25, metavar="N",
                        help="messages per commit (the group committer's groups: 18-30)")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions under valgrind callgrind (slow: ~0.25 s a"
                             " message; use --messages 200)")
    parser.add_argument("--against", metavar="REV", help="also measure this git revision,"
                        " at the same time")
    parser.add_argument("--encrypted", action="store_const", help="encryption at rest on"
                        " (a master key made for the run), as deployed",
                        const=base64.b64encode(os.urandom(32)).decode())
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--toggle-callgrind", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.messages, args.group, args.toggle_callgrind)
        return
    if args.instructions and shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    print(f"HL7 v2 in process: {args.messages} messages ADT:lab:vitals 4:3:3 in groups of"
          f" {args.group}, SQLite synchronous=FULL, after {WARM_UP} warm-up messages"
          f"{', encrypted at rest' if args.encrypted else ''}", flush=True)
    with tempfile.TemporaryDirectory(prefix="carebridge-bench-hl7cpu-") as tmp:
        trees = [("working", ROOT / "src")]
        worktree = Path(tmp) / "against"
        if args.against:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f",
                            str(worktree), args.against], check=True, capture_output=True)
            trees.append((args.against, worktree / "src"))
        try:
            outs = {label: (Path(tmp) / f"cg-{n}.out" if args.instructions else None)
                    for n, (label, _) in enumerate(trees)}
            running = [(label, child(src, args, outs[label])) for label, src in trees]
            results = {label: report(label, p, outs[label], args.messages)
                       for label, p in running}
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(worktree)], check=False, capture_output=True)
        if args.against:
            key = "instructions" if args.instructions else "cpu_ms"
            change = results["working"][key] / results[args.against][key] - 1
            print(f"working tree vs {args.against}: {change:+.1%} "
                  f"{'instructions' if args.instructions else 'CPU'} per message")


if __name__ == "__main__":
    main()
