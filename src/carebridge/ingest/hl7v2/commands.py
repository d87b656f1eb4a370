"""``carebridge hl7 errors`` and ``carebridge hl7 replay ID``: the error queue by hand."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from carebridge.ingest.hl7v2.processor import Hl7Processor, feed_caller
from carebridge.ingest.hl7v2.store import MessageStore
from carebridge.security.audit_events import cli_operator, hl7v2_event
from carebridge.security.commands import cli_ledger
from carebridge.security.crypto import open_data_repository
from carebridge.services.resources import ResourceService
from carebridge.services.validation import WriteValidation
from carebridge.storage.factory import DEFAULT_DATABASE_URL

hl7_app = typer.Typer(help="HL7 v2 feeds: the error queue", no_args_is_help=True)
console = Console()

Database = Annotated[
    str, typer.Option("--database", "-d", envvar="CAREBRIDGE_DATABASE",
                      help="sqlite:///path or postgresql://user@host:port/db")
]


@hl7_app.command("errors")
def errors(database: Database = DEFAULT_DATABASE_URL,
           all_: Annotated[bool, typer.Option("--all", help="resolved ones too")] = False,
           limit: int = 100) -> None:
    """List rejected or failed messages kept for replay (open ones by default)."""
    repo = open_data_repository(database)  # the archive is sealed when a master key is set
    try:
        queued = MessageStore(repo).errors(status=None if all_ else "open", limit=limit)
    finally:
        repo.close()
    # One line per message (greppable, never wrapped): id, when, who, what, why.
    for e in queued:
        typer.echo(f"#{e.id}  {e.received_at[:19]}  {e.sender}  {e.control_id}  "
                   f"{e.message_type}  {e.ack_code} {e.error_code}  {e.location or '-'}  "
                   f"{e.status} x{e.attempts}  {e.reason}")
    console.print(f"{len(queued)} {'messages' if len(queued) != 1 else 'message'}")


@hl7_app.command("replay")
def replay(error_id: Annotated[int, typer.Argument(help="id from `carebridge hl7 errors`")],
           database: Database = DEFAULT_DATABASE_URL) -> None:
    """Run one queued message again (after fixing what made it fail). Exits 1 if it fails.

    Recorded like a message taken over MLLP (an AuditEvent in the ledger), with the OS user
    who ran the command as the requestor."""
    repo = open_data_repository(database)  # encrypted at rest when a master key is set
    try:
        queued = MessageStore(repo).error(error_id)
        if queued is None:
            console.print(f"[red]no HL7 v2 error #{error_id}[/]")
            raise typer.Exit(2)
        # validated like every other write (the server's default mode, strict)
        service = ResourceService(repo, validation=WriteValidation(repo, "strict"))
        ledger = cli_ledger(repo)
        try:
            outcome = Hl7Processor(service).replay(error_id)
            code, _, trigger = queued.message_type.partition("^")
            ledger.record(hl7v2_event(
                feed_caller(queued.sender.split("|", 1)[0] or None), address=None,
                message_code=code, trigger_event=trigger, control_id=queued.control_id,
                ack_code=outcome.ack_code,
                condition=outcome.error.code if outcome.error else "",
                location=outcome.error.location if outcome.error else "",
                duplicate=outcome.duplicate, provenance_id=outcome.provenance_id,
                error_id=error_id, operator=cli_operator()))
        finally:
            ledger.close()
    finally:
        repo.close()
    console.print(outcome.ack.replace("\r", "\n").rstrip())
    if outcome.ack_code != "AA":
        raise typer.Exit(1)
    console.print(f"[green]accepted[/] (archive #{outcome.archive_id}"
                  f"{', already stored before' if outcome.duplicate else ''})")
