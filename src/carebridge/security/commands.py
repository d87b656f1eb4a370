"""``carebridge user|client|keys|audit ...``: the security commands, and the demo's users.

Secrets (passwords, TOTP seeds, client secrets) are shown once when created and stored only
as hashes (or wrapped, for TOTP seeds, when encryption at rest is on).

Every command that changes users, clients or keys records one FHIR AuditEvent (DICOM 110113
Security Alert; subtype 110137 User Security Attributes Changed or 110129 Security
Configuration) naming the OS user who ran it (``cli:<user>``), what it changed and whether it
succeeded, and flushes the audit ledger before it returns. Secrets never enter the event.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import orjson
import typer
from argon2 import PasswordHasher
from rich.console import Console

from carebridge.security.audit import AuditLedger
from carebridge.security.audit_events import (
    SECURITY_CONFIGURATION,
    USER_SECURITY_CHANGED,
    admin_event,
    cli_operator,
    login_event,
)
from carebridge.security.authority import Authority
from carebridge.security.crypto import (
    EncryptedRepository,
    LocalMasterKey,
    open_data_repository,
)
from carebridge.security.tokens import TokenIssuer
from carebridge.security.users import provisioning_uri
from carebridge.storage.base import Repository
from carebridge.storage.factory import DEFAULT_DATABASE_URL

console = Console()
Database = Annotated[
    str, typer.Option("--database", "-d", envvar="CAREBRIDGE_DATABASE",
                      help="sqlite:///path or postgresql://user@host:port/db")
]
BaseUrl = Annotated[str, typer.Option(envvar="CAREBRIDGE_PUBLIC_URL",
                                      help="the server's public origin (token issuer)")]

user_app = typer.Typer(help="users: add, disable, reset-mfa", no_args_is_help=True)
client_app = typer.Typer(help="OAuth clients: add", no_args_is_help=True)
keys_app = typer.Typer(help="signing and encryption keys: rotate", no_args_is_help=True)


def _authority(database: str, base_url: str = "http://127.0.0.1:8080",
               hasher: PasswordHasher | None = None) -> Authority:
    return Authority.open(open_data_repository(database), base_url.rstrip("/"), hasher=hasher)


def cli_ledger(repository: Repository) -> AuditLedger:
    """The audit ledger for a command: events queue in memory and are written by
    ``close()``, which the command calls before it exits (no writer thread)."""
    return Authority.open(repository, "http://127.0.0.1").ledger


#: ``record(ok, detail)``: the command's one AuditEvent.
Record = Callable[[bool, str], None]


@contextmanager
def _administering(database: str, change: dict[str, str], action: str, target: str,
                   kind: str) -> Iterator[tuple[Authority, Record]]:
    """The authority for one administration command and its audit record; on the way out
    the event is written (a failure the command did not record is recorded as one) and the
    database closed."""
    authority = _authority(database)
    recorded: list[bool] = []
    operator = cli_operator()

    def record(ok: bool, detail: str) -> None:
        authority.ledger.record(admin_event(change, action, operator, target,
                                            target_kind=kind, ok=ok, detail=detail))
        recorded.append(ok)

    try:
        try:
            yield authority, record
        except BaseException as exc:
            if not recorded:
                record(False, f"failed ({type(exc).__name__})")
            raise
        finally:
            authority.ledger.close()
    finally:
        authority.store.repository.close()


def _password(given: str | None) -> str:
    if given:
        return given
    from_env = os.environ.get("CAREBRIDGE_PASSWORD")
    if from_env:
        return from_env
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))


@user_app.command("add")
def user_add(
    username: str,
    role: Annotated[list[str], typer.Option(
        help="physician, nurse, admin, auditor or patient (repeatable)")],
    patient: Annotated[str | None, typer.Option(help="the Patient id a patient user is")] = None,
    password: Annotated[str | None, typer.Option(
        help="the password (else CAREBRIDGE_PASSWORD or a prompt)")] = None,
    database: Database = DEFAULT_DATABASE_URL,
) -> None:
    """Create a user; staff get a TOTP secret to enrol in an authenticator app."""
    with _administering(database, USER_SECURITY_CHANGED, "C", username, "user") as (
            authority, record):
        try:
            if authority.users.get(username) is not None:
                raise ValueError(f"user {username} exists")
            secret = authority.users.add(username, _password(password), set(role), patient)
        except ValueError as exc:
            record(False, f"user add refused: {exc}")
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from None
        record(True, f"user added, roles {', '.join(sorted(role))}")
    console.print(f"user {username} added ({', '.join(sorted(role))})")
    if secret:
        console.print(f"TOTP secret: {secret}\n  {provisioning_uri(username, secret)}")


@user_app.command("disable")
def user_disable(username: str, database: Database = DEFAULT_DATABASE_URL) -> None:
    """Disable a user (sign-in refused; refresh tokens stop working)."""
    with _administering(database, USER_SECURITY_CHANGED, "U", username, "user") as (
            authority, record):
        found = authority.users.disable(username)
        record(found, "user disabled" if found else "user disable refused: no such user")
    if not found:
        console.print(f"[red]no user {username}[/]")
        raise typer.Exit(1)
    console.print(f"user {username} disabled")


@user_app.command("reset-mfa")
def user_reset_mfa(username: str, database: Database = DEFAULT_DATABASE_URL) -> None:
    """Give a user a new TOTP secret (the old one stops working) and clear a lockout."""
    with _administering(database, USER_SECURITY_CHANGED, "U", username, "user") as (
            authority, record):
        try:
            secret = authority.users.reset_mfa(username)
        except KeyError:
            record(False, "user reset-mfa refused: no such user")
            console.print(f"[red]no user {username}[/]")
            raise typer.Exit(1) from None
        record(True, "user TOTP secret replaced, lockout cleared")
    console.print(f"new TOTP secret: {secret}\n  {provisioning_uri(username, secret)}")


@client_app.command("add")
def client_add(
    client_id: str,
    kind: Annotated[str, typer.Option(help="public, confidential or backend")],
    scope: Annotated[str, typer.Option(help="the most this client may be granted")],
    redirect_uri: Annotated[list[str] | None, typer.Option(help="exact redirect URI")] = None,
    role: Annotated[list[str] | None, typer.Option(
        help="backend: backend, interface, device or auditor")] = None,
    jwks: Annotated[Path | None, typer.Option(help="backend: JWK Set file of public keys")
                    ] = None,
    database: Database = DEFAULT_DATABASE_URL,
) -> None:
    """Register an OAuth client (SMART app or backend service)."""
    with _administering(database, SECURITY_CONFIGURATION, "C", client_id, "client") as (
            authority, record):
        try:
            keys = orjson.loads(jwks.read_bytes()) if jwks else None
            secret = authority.clients.add(client_id, kind, redirect_uris=redirect_uri,
                                           scopes=scope, roles=set(role or ()), jwks=keys)
        except ValueError as exc:
            record(False, f"client add refused: {exc}")
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from None
        record(True, f"{kind} client added, scope {scope}"
               + (f", roles {', '.join(sorted(role))}" if role else ""))
    console.print(f"client {client_id} added ({kind})")
    if secret:
        console.print(f"client secret (shown once): {secret}")


@keys_app.command("rotate")
def keys_rotate(
    database: Database = DEFAULT_DATABASE_URL,
    new_master_key_file: Annotated[Path | None, typer.Option(
        help="re-wrap every data key under this new master key")] = None,
) -> None:
    """Rotate keys without downtime: a new token signing key (old ones stay published until
    their tokens expire; running servers pick the new one up within 30 s) and, with
    encryption at rest on, a new data key for new writes; --new-master-key-file re-wraps
    every data key under a new master key (bodies are not re-encrypted)."""
    with _administering(database, SECURITY_CONFIGURATION, "U", "signing and data keys",
                        "key") as (authority, record):
        repo = authority.store.repository
        kid = authority.keys.rotate()
        console.print(f"new signing key {kid}")
        done = f"new signing key {kid}"
        if isinstance(repo, EncryptedRepository):
            new = LocalMasterKey.from_text(new_master_key_file.read_bytes()) if (
                new_master_key_file) else None
            rewrapped = repo.keys.rotate(new)
            console.print("new data key" + (f"; {rewrapped} data keys re-wrapped under the"
                                             " new master key" if new else ""))
            done += ", new data key" + (f", {rewrapped} data keys re-wrapped under a new"
                                        " master key" if new else "")
        elif new_master_key_file:
            record(False, f"{done}; master key not changed: encryption at rest is off")
            console.print("[red]encryption at rest is off: no data keys to re-wrap[/]")
            raise typer.Exit(2)
        record(True, done)


DEMO_CLIENT = "demo-app"
DEMO_REDIRECT = "http://127.0.0.1:9090/callback"


def demo_credentials(database: str, base_url: str, patient_id: str,
                     hasher: PasswordHasher | None = None) -> None:
    """Create (or reset) the demo's users and client and print their credentials."""
    authority = _authority(database, base_url, hasher)
    users, clients = authority.users, authority.clients
    operator, ledger = cli_operator(), authority.ledger
    try:
        console.print("[bold]Demo credentials[/] (demo database only; passwords change on"
                      " every start):")
        for name, roles, patient in (("demo-physician", {"physician"}, None),
                                     ("demo-auditor", {"auditor"}, None),
                                     ("demo-patient", {"patient"}, patient_id)):
            password = secrets.token_urlsafe(12)
            if users.get(name) is None:
                secret = users.add(name, password, roles, patient)
                change = "C", "demo user added"
            else:
                users.set_password(name, password)
                secret = users.reset_mfa(name) if roles != {"patient"} else None
                change = "U", "demo user password" + (" and TOTP secret" if secret else "") + (
                    " replaced")
            ledger.record(admin_event(USER_SECURITY_CHANGED, change[0], operator, name,
                                      target_kind="user", ok=True, detail=change[1]))
            line = f"  {name}: password {password}"
            if secret:
                line += f", TOTP secret {secret}"
            console.print(line, soft_wrap=True)
        if clients.get(DEMO_CLIENT) is None:
            clients.add(DEMO_CLIENT, "public", redirect_uris=[DEMO_REDIRECT],
                        scopes="openid fhirUser launch launch/patient offline_access "
                               "patient/*.rs user/*.cruds")
            ledger.record(admin_event(SECURITY_CONFIGURATION, "C", operator, DEMO_CLIENT,
                                      target_kind="client", ok=True,
                                      detail="demo public client added"))
        console.print(f"  public SMART client {DEMO_CLIENT}, redirect {DEMO_REDIRECT}")
        demo_issuer = TokenIssuer(authority.keys, base_url, base_url + "/fhir", lifetime=8 * 3600)
        token = demo_issuer.issue(subject="demo-physician", client_id="demo-cli",
                                  scope="user/*.cruds", roles=frozenset({"physician"})).token
        ledger.record(login_event("token", "0", "demo-physician", "demo-cli",
                                  f"8-hour token issued by {operator} (demo)"))
        console.print("  an 8-hour physician token for curl:\n"
                      f"    export TOKEN={token}\n"
                      f'    curl -H "Authorization: Bearer $TOKEN" {base_url}/fhir/Patient',
                      soft_wrap=True)  # never break a token across lines
    finally:
        try:
            ledger.close()
        finally:
            authority.store.repository.close()


audit_app = typer.Typer(help="the audit ledger: verify", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(
    database: Database = DEFAULT_DATABASE_URL,
    trusted_jwks: Annotated[Path | None, typer.Option(
        help="public keys kept outside the database to check checkpoints with")] = None,
) -> None:
    """Check every ledger entry's hash chain and every signed checkpoint. Exits 1 and names
    the first bad entry if anything was edited, deleted, inserted or reordered."""
    from joserfc.jwk import KeySet

    from carebridge.security.audit import verify_ledger

    repo = open_data_repository(database)
    try:
        trusted = KeySet.import_key_set(orjson.loads(trusted_jwks.read_bytes())) if (
            trusted_jwks) else None
        report = verify_ledger(repo, Authority.open(repo, "http://127.0.0.1").keys,
                               trusted=trusted)
    finally:
        repo.close()
    rate = report.checked / report.seconds if report.seconds else 0.0
    console.print(f"{report.checked} entries, {report.checkpoints} signed checkpoints checked"
                  f" in {report.seconds:.2f} s ({rate:,.0f} entries/s)")
    if not report.ok:
        console.print(f"[bold red]LEDGER BROKEN at entry {report.first_bad}[/]: {report.problem}")
        raise typer.Exit(1)
    console.print("[green]ledger intact[/]")



@keys_app.command("generate-master")
def keys_generate_master(path: Path) -> None:
    """Write a new random 256-bit master key (base64, mode 0600) to PATH; point
    CAREBRIDGE_MASTER_KEY_FILE at it to encrypt resource bodies at rest."""
    from carebridge.security.crypto import generate_master_key

    try:
        generate_master_key(path)
    except FileExistsError:
        console.print(f"[red]{path} exists; not overwritten[/]")
        raise typer.Exit(2) from None
    console.print(f"master key written to {path}")
