"""Users: Argon2id passwords, TOTP second factor for staff, lockout with back-off.

- Passwords are hashed with Argon2id (RFC 9106) by argon2-cffi; its default parameters
  (~100 ms a hash here) in production, cheap ones only where tests pass their own hasher.
  Hashes are re-computed on login when the parameters changed.
- Staff roles (:data:`carebridge.security.roles.STAFF_ROLES`) must present a TOTP code
  (RFC 6238: 30 s steps, 6 digits, SHA-1, one step of clock drift either way); a time step is
  accepted once, so an overheard code cannot be replayed.
- After :data:`MAX_FAILURES` consecutive failures an account is locked, for 30 s doubling with
  each further failure up to 15 minutes; a locked account refuses even the right password.
- Every refusal says the same thing, and an unknown user costs a hash like a known one, so
  neither the answer nor its timing tells which usernames exist.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from carebridge.security import roles as R
from carebridge.security.store import SecurityStore, now

MAX_FAILURES = 5
_BASE_LOCK = 30.0
_MAX_LOCK = 900.0
TOTP_STEP = 30


class LoginFailed(Exception):
    """Username, password or code wrong, account locked or disabled (deliberately vague)."""

    def __init__(self, reason: str) -> None:
        super().__init__("Login failed: wrong username, password or code, or account locked")
        self.reason = reason  # for the audit trail only, never for the user


@dataclass(frozen=True, slots=True)
class User:
    username: str
    roles: frozenset[str]
    patient_id: str | None
    totp_secret: str | None
    disabled: bool

    @property
    def needs_totp(self) -> bool:
        return bool(self.roles & R.STAFF_ROLES)

    @property
    def fhir_user(self) -> str | None:
        return f"Patient/{self.patient_id}" if self.patient_id else None


class UserDirectory:
    def __init__(self, store: SecurityStore, hasher: PasswordHasher | None = None,
                 seal: Callable[[bytes], bytes] | None = None,
                 unseal: Callable[[bytes], bytes] | None = None) -> None:
        """``seal``/``unseal``: how TOTP seeds are kept (sealed under the data keys when
        encryption at rest is on; stored as ``sealed:<base64>``)."""
        self.store = store
        self.hasher = hasher or PasswordHasher()
        self.seal, self.unseal = seal, unseal
        self._dummy = self.hasher.hash("not a password anyone has")

    def add(self, username: str, password: str, roles: set[str],
            patient_id: str | None = None) -> str | None:
        """Create a user; returns the TOTP secret to enrol (staff roles), else None."""
        unknown = set(roles) - R.USER_ROLES
        if unknown or not roles:
            raise ValueError(f"roles must be among {sorted(R.USER_ROLES)}, not {sorted(roles)}")
        if R.PATIENT in roles and not patient_id:
            raise ValueError("a patient user must be linked to a Patient (--patient)")
        if len(password) < 12:
            raise ValueError("passwords have at least 12 characters")
        secret = pyotp.random_base32() if roles & R.STAFF_ROLES else None
        self.store.execute(
            "INSERT INTO sec_user (username, password_hash, roles, patient_id, totp_secret,"
            " created) VALUES (?, ?, ?, ?, ?, ?)",
            (username, self.hasher.hash(password), " ".join(sorted(roles)), patient_id,
             self._keep(secret), now()))
        return secret

    def get(self, username: str) -> User | None:
        rows = self.store.query(
            "SELECT username, roles, patient_id, totp_secret, disabled FROM sec_user"
            " WHERE username = ?", (username,))
        if not rows:
            return None
        name, roles, patient, secret, disabled = rows[0]
        return User(name, frozenset(roles.split()), patient, self._read(secret),
                    bool(disabled))

    def _keep(self, secret: str | None) -> str | None:
        if secret is None or self.seal is None:
            return secret
        return "sealed:" + base64.b64encode(self.seal(secret.encode())).decode()

    def _read(self, stored: str | None) -> str | None:
        if stored is None or not stored.startswith("sealed:"):
            return stored
        if self.unseal is None:
            raise RuntimeError("TOTP seeds are sealed: configure the master key")
        return self.unseal(base64.b64decode(stored[7:])).decode()

    def set_password(self, username: str, password: str) -> bool:
        if len(password) < 12:
            raise ValueError("passwords have at least 12 characters")
        return self.store.execute(
            "UPDATE sec_user SET password_hash = ?, failures = 0, locked_until = 0"
            " WHERE username = ?", (self.hasher.hash(password), username)) > 0

    def disable(self, username: str) -> bool:
        return self.store.execute("UPDATE sec_user SET disabled = ? WHERE username = ?",
                                  (self.store.flag(True), username)) > 0

    def reset_mfa(self, username: str) -> str:
        """A new TOTP secret (the old one stops working) and the lockout cleared."""
        secret = pyotp.random_base32()
        if not self.store.execute(
                "UPDATE sec_user SET totp_secret = ?, totp_last = 0, failures = 0,"
                " locked_until = 0 WHERE username = ?", (self._keep(secret), username)):
            raise KeyError(username)
        return secret

    def authenticate(self, username: str, password: str, code: str | None) -> User:
        moment = now()
        rows = self.store.query(
            "SELECT password_hash, failures, locked_until, totp_last FROM sec_user"
            " WHERE username = ?", (username,))
        if not rows:
            self._verify(self._dummy, password)
            raise LoginFailed("unknown user")
        stored, failures, locked_until, totp_last = rows[0]
        if locked_until > moment:
            self._verify(self._dummy, password)
            raise LoginFailed("locked")
        user = self.get(username)
        assert user is not None
        if not self._verify(stored, password):
            self._fail(username, failures)
            raise LoginFailed("wrong password")
        if user.disabled:
            raise LoginFailed("disabled")
        step = 0
        if user.needs_totp:
            step = _totp_step(user.totp_secret, code, moment)
            if step <= totp_last:
                self._fail(username, failures)
                raise LoginFailed("wrong or replayed TOTP code")
        rehash = self.hasher.check_needs_rehash(stored)
        self.store.execute(
            "UPDATE sec_user SET failures = 0, locked_until = 0, totp_last = ?"
            + (", password_hash = ?" if rehash else "") + " WHERE username = ?",
            (max(step, totp_last), *((self.hasher.hash(password),) if rehash else ()),
             username))
        return user

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return bool(self.hasher.verify(stored, password))
        except (VerificationError, InvalidHashError):
            return False

    def _fail(self, username: str, failures: int) -> None:
        failures += 1
        lock = 0.0
        if failures >= MAX_FAILURES:
            lock = now() + min(_MAX_LOCK, _BASE_LOCK * 2 ** (failures - MAX_FAILURES))
        self.store.execute(
            "UPDATE sec_user SET failures = ?, locked_until = ? WHERE username = ?",
            (failures, lock, username))


def _totp_step(secret: str | None, code: str | None, moment: float) -> int:
    """The RFC 6238 time step ``code`` belongs to (current, previous or next), or 0."""
    if not secret or not code or not code.isdigit():
        return 0
    totp = pyotp.TOTP(secret, interval=TOTP_STEP)
    for drift in (0, -1, 1):
        at = moment + drift * TOTP_STEP
        if pyotp.utils.strings_equal(totp.at(at), code):
            return int(at // TOTP_STEP)
    return 0


def provisioning_uri(username: str, secret: str, issuer: str = "carebridge") -> str:
    """The otpauth:// URI an authenticator app scans."""
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=issuer)
