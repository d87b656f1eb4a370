"""Point 2: users, Argon2id, TOTP for staff, lockout with back-off."""

from __future__ import annotations

import time
from typing import Any

import pyotp
import pytest

from carebridge.security.users import MAX_FAILURES, LoginFailed

Secured = Any
PASSWORD = "correct horse battery"


def test_passwords_are_argon2id_and_staff_get_totp(secured: Secured) -> None:
    users = secured.authority.users
    secret = users.add("house", PASSWORD, {"physician"})
    assert secret is not None and len(secret) >= 16
    assert users.add("ada", PASSWORD, {"patient"}, patient_id="p1") is None
    stored = secured.authority.store.query(
        "SELECT password_hash FROM sec_user WHERE username = ?", ("house",))[0][0]
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    with pytest.raises(ValueError, match="linked"):
        users.add("bob", PASSWORD, {"patient"})
    with pytest.raises(ValueError, match="roles"):
        users.add("eve", PASSWORD, {"superuser"})
    with pytest.raises(ValueError, match="12"):
        users.add("short", "short", {"nurse"})


def test_staff_need_a_fresh_totp_code(secured: Secured) -> None:
    users = secured.authority.users
    totp = pyotp.TOTP(users.add("house", PASSWORD, {"physician"}))
    with pytest.raises(LoginFailed):
        users.authenticate("house", PASSWORD, None)
    with pytest.raises(LoginFailed):
        users.authenticate("house", PASSWORD, "000000" if totp.now() != "000000" else "111111")
    code = totp.now()
    assert users.authenticate("house", PASSWORD, code).roles == {"physician"}
    with pytest.raises(LoginFailed):  # the same time step twice: a replay
        users.authenticate("house", PASSWORD, code)
    assert users.authenticate("house", PASSWORD, totp.at(time.time() + 30)).username == "house"


def test_patients_log_in_without_totp(secured: Secured) -> None:
    users = secured.authority.users
    users.add("ada", PASSWORD, {"patient"}, patient_id="p1")
    user = users.authenticate("ada", PASSWORD, None)
    assert user.patient_id == "p1" and user.fhir_user == "Patient/p1"


def test_lockout_after_repeated_failures(secured: Secured) -> None:
    users = secured.authority.users
    users.add("ada", PASSWORD, {"patient"}, patient_id="p1")
    for _ in range(MAX_FAILURES):
        with pytest.raises(LoginFailed) as failed:
            users.authenticate("ada", "wrong password!", None)
        assert failed.value.reason == "wrong password"
    with pytest.raises(LoginFailed) as locked:  # the right password, but locked now
        users.authenticate("ada", PASSWORD, None)
    assert locked.value.reason == "locked"
    # the same words whatever the reason, and for unknown users too
    with pytest.raises(LoginFailed) as unknown:
        users.authenticate("nobody", PASSWORD, None)
    assert str(unknown.value) == str(locked.value)
    until = secured.authority.store.query(
        "SELECT locked_until FROM sec_user WHERE username = 'ada'")[0][0]
    assert 25 < until - time.time() <= 30  # 30 s after the fifth failure, then doubling


def test_disable_and_reset_mfa(secured: Secured) -> None:
    users = secured.authority.users
    old = users.add("nina", PASSWORD, {"nurse"})
    assert users.disable("nina")
    with pytest.raises(LoginFailed) as failed:
        users.authenticate("nina", PASSWORD, pyotp.TOTP(old).now())
    assert failed.value.reason == "disabled"
    new = users.reset_mfa("nina")
    assert new != old
    with pytest.raises(KeyError):
        users.reset_mfa("nobody")
