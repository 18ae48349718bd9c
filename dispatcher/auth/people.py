"""People who sign in to the dashboard: passwords, TOTP codes, lock-out and sessions.

- Passwords are hashed with argon2id (argon2-cffi's ``PasswordHasher``, whose defaults are the
  low-memory profile of RFC 9106); a hash with older parameters is redone at the next sign-in.
- Approvers and admins (``TOTP_ROLES``) also give a TOTP code (RFC 6238, 30 s, 6 digits,
  pyotp). They enrol at their first sign-in: the dashboard shows the secret as a QR code
  (segno) and takes the first right code as proof. The secret is stored encrypted with a key
  derived from ``DISPATCHER_SECRET_KEY`` (dispatcher.core.secrets), never in clear; a code is
  good once (the last accepted time step is kept).
- ``MAX_FAILURES`` wrong passwords or codes in a row lock the person out for ``LOCK_FOR``,
  right password or not; a right sign-in sets the count back to zero. An unknown login costs
  the same hashing time as a known one and gets the same answer.
- A dashboard session is a signed cookie naming the person and when it began, good for
  ``SESSION_FOR``; a new password, a TOTP reset or new roles void the sessions begun before.

Services never commit: a failed attempt is counted by the caller's transaction, so the caller
returns the refusal rather than raising it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadData, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from dispatcher.auth.service import (
    PERSON_ROLES,
    TOTP_ROLES,
    Caller,
    Role,
    Unauthenticated,
    first_role,
    new_principal,
    person_roles,
    roles_of,
)
from dispatcher.core.config import Settings
from dispatcher.core.secrets import decrypt, encrypt, existing_signing_key, signing_key
from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Conflict, Invalid, NotFound
from dispatcher.tables.auth import ApiKey, PersonRole, Principal, PrincipalKind
from dispatcher.tables.units import Unit
from dispatcher.units import service as units

PASSWORDS = PasswordHasher()
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
MAX_FAILURES = 5
LOCK_FOR = timedelta(minutes=15)
SESSION_FOR = timedelta(hours=12)
# Between the password and the code: how long the half-signed-in state lasts.
PENDING_FOR = timedelta(minutes=5)
TOTP_ISSUER = "BHXH Thông báo"
TOTP_PURPOSE = b"totp-secret"
TOTP_STEP = 30
LOGIN = r"^[a-z0-9][a-z0-9._@-]{1,99}$"
# Verifying against this when the login is unknown takes as long as a real check.
_DUMMY_HASH = PASSWORDS.hash("not a password of anyone")


class Step(StrEnum):
    """What a sign-in needs next."""

    done = "done"  # signed in
    code = "code"  # a TOTP code
    enrol = "enrol"  # TOTP enrolment (the QR code), then a code


class Refusal(StrEnum):
    wrong = "wrong"  # unknown login or wrong password: one answer for both
    wrong_code = "wrong_code"
    locked = "locked"
    no_role = "no_role"
    no_outside_key = "no_outside_key"  # TOTP needs DISPATCHER_SECRET_KEY


@dataclass(frozen=True)
class Attempt:
    person: Principal | None
    step: Step | None = None
    refusal: Refusal | None = None
    locked_until: datetime | None = None


# -- People ---------------------------------------------------------------------------------------


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"a password has at least {MIN_PASSWORD} characters", loc=["password"])
    if len(password) > MAX_PASSWORD:
        raise Invalid(f"a password has at most {MAX_PASSWORD} characters", loc=["password"])


def find(session: Session, who: str) -> Principal:
    """A person by login, or by id."""
    who = who.strip()
    row = session.scalar(select(Principal).where(Principal.login == who.lower()))
    if row is None and who.isdigit():
        row = session.get(Principal, int(who))
    if row is None or row.kind != PrincipalKind.person:
        raise NotFound(f"there is no person with login or id {who!r}")
    return row


def in_scope(session: Session, scope: set[int], person_id: int) -> Principal:
    """The person ``person_id`` if they belong to a unit of ``scope``; anyone else, like a
    person who does not exist, is not found."""
    person = session.get(Principal, person_id)
    if person is None or person.kind != PrincipalKind.person or person.unit_id not in scope:
        raise NotFound(f"there is no person {person_id}")
    return person


def list_people(session: Session, scope: set[int] | None = None) -> list[Principal]:
    """People by id, those of the units of ``scope`` only when it is given."""
    query = select(Principal).where(Principal.kind == PrincipalKind.person)
    if scope is not None:
        query = query.where(Principal.unit_id.in_(scope))
    return list(session.scalars(query.order_by(Principal.id)))


def units_by_id(session: Session) -> dict[int, Unit]:
    """Every unit by id (people listed name their unit)."""
    return {u.id: u for u in units.all_units(session)}


def home_unit(session: Session, code: str | None, *, scope: set[int] | None = None) -> Unit:
    """The unit of that code (the root without one). A unit outside ``scope`` is refused as
    if it did not exist."""
    unit = units.by_code(session, code, loc=["body", "unit"]) if code else units.root(session)
    if scope is not None and unit.id not in scope:
        raise Invalid(f"there is no unit with code {code!r}", loc=["body", "unit"])
    return unit


def generate_password() -> str:
    """A random initial password (24 characters, 144 bits), shown once to whoever made it."""
    return secrets.token_urlsafe(18)


def add_person(
    session: Session,
    *,
    login: str,
    name: str,
    unit: Unit,
    roles: list[str],
    password: str | None = None,
) -> Principal:
    """A person of ``unit`` holding ``roles``, who signs in as ``login``."""
    login = login.strip().lower()
    if not re.fullmatch(LOGIN, login):
        raise Invalid(
            "a login is 2 to 100 of a-z, 0-9, '.', '_', '@', '-', starting with a letter or digit",
            loc=["login"],
        )
    if session.scalar(select(Principal.id).where(Principal.login == login)) is not None:
        raise Conflict(f"login {login!r} is taken")
    chosen = person_roles(roles, ["roles"])
    if not chosen:
        raise Invalid(
            f"a person holds at least one role: {', '.join(r.value for r in PERSON_ROLES)}",
            loc=["roles"],
        )
    person = new_principal(
        session, kind=PrincipalKind.person, name=name, unit_id=unit.id, roles=chosen
    )
    person.login = login
    if password is not None:
        set_password(session, person, password)
    session.flush()
    return person


def grant(session: Session, person: Principal, roles: list[str]) -> None:
    """Give a person these roles too."""
    held = roles_of(person)
    for role in person_roles(roles, ["roles"]):
        if role not in held:
            person.roles.append(PersonRole(role=role.value))
    person.sessions_since = utcnow()
    session.flush()


def revoke(session: Session, person: Principal, roles: list[str]) -> None:
    """Take these roles from a person: their keys carrying them stop working and their
    dashboard sessions end. A person keeps at least one role (disable them instead)."""
    taken = {r.value for r in person_roles(roles, ["body", "roles"])}
    kept = [r for r in person.roles if r.role not in taken]
    if not kept:
        raise Invalid(
            "a person keeps at least one role: to take them all, disable the person",
            loc=["body", "roles"],
        )
    person.roles = kept
    person.sessions_since = utcnow()
    session.flush()


def unlock(session: Session, person: Principal) -> None:
    """End a lock-out after too many wrong passwords or codes; the count starts again."""
    person.failed_sign_ins = 0
    person.locked_until = None


def disable(session: Session, person: Principal) -> int:
    """A person who leaves: every role, the password and the TOTP secret are taken, their
    sessions end and their keys are revoked. Returns how many keys were revoked. Granting a
    role and setting a password (``dispatcher people password``) bring them back."""
    now = utcnow()
    person.roles = []
    person.password_hash = None
    reset_totp(session, person)
    unlock(session, person)
    person.sessions_since = now
    keys = list(
        session.scalars(
            select(ApiKey).where(ApiKey.principal_id == person.id, ApiKey.revoked_at.is_(None))
        )
    )
    for key in keys:
        key.revoked_at = now
    session.flush()
    return len(keys)


def is_locked(person: Principal) -> bool:
    return person.locked_until is not None and person.locked_until > utcnow()


def set_password(session: Session, person: Principal, password: str) -> None:
    """A new password: sessions begun before end, a lock-out ends."""
    check_password_rules(password)
    person.password_hash = PASSWORDS.hash(password)
    person.failed_sign_ins = 0
    person.locked_until = None
    person.sessions_since = utcnow()


def reset_totp(session: Session, person: Principal) -> None:
    """Forget the person's TOTP secret: they enrol again at their next sign-in."""
    person.totp_secret = None
    person.totp_confirmed_at = None
    person.totp_last_step = None
    person.sessions_since = utcnow()


def needs_totp(person: Principal) -> bool:
    return bool(roles_of(person) & TOTP_ROLES)


# -- Signing in -----------------------------------------------------------------------------------


def _fail(person: Principal, now: datetime, refusal: Refusal) -> Attempt:
    person.failed_sign_ins = (person.failed_sign_ins or 0) + 1
    if person.failed_sign_ins >= MAX_FAILURES:
        person.failed_sign_ins = 0
        person.locked_until = now + LOCK_FOR
        return Attempt(person, refusal=Refusal.locked, locked_until=person.locked_until)
    return Attempt(person, refusal=refusal)


def _locked(person: Principal, now: datetime) -> Attempt | None:
    if person.locked_until is not None and person.locked_until > now:
        return Attempt(person, refusal=Refusal.locked, locked_until=person.locked_until)
    return None


def sign_in_password(session: Session, *, login: str, password: str) -> Attempt:
    """The first step: the login and password. Says what comes next, or why not."""
    now = utcnow()
    person = session.scalar(select(Principal).where(Principal.login == login.strip().lower()))
    if person is None or person.kind != PrincipalKind.person or person.password_hash is None:
        with contextlib.suppress(VerificationError):
            PASSWORDS.verify(_DUMMY_HASH, password[:MAX_PASSWORD])
        return Attempt(None, refusal=Refusal.wrong)
    locked = _locked(person, now)
    if locked is not None:
        return locked
    try:
        PASSWORDS.verify(person.password_hash, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return _fail(person, now, Refusal.wrong)
    if PASSWORDS.check_needs_rehash(person.password_hash):
        person.password_hash = PASSWORDS.hash(password)
    if not roles_of(person):
        return Attempt(person, refusal=Refusal.no_role)
    if not needs_totp(person):
        person.failed_sign_ins = 0
        return Attempt(person, step=Step.done)
    return Attempt(person, step=Step.code if person.totp_confirmed_at else Step.enrol)


def enrolment_uri(settings: Settings, person: Principal) -> str:
    """The ``otpauth://`` URI of the person's unconfirmed secret, made if there is none.
    Raises NoOutsideKey without ``DISPATCHER_SECRET_KEY``."""
    if person.totp_confirmed_at is not None:
        raise Conflict(f"{person.login} has enrolled already; reset it to enrol again")
    secret = decrypt(settings, TOTP_PURPOSE, person.totp_secret) if person.totp_secret else None
    if secret is None:
        secret = pyotp.random_base32()
        person.totp_secret = encrypt(settings, TOTP_PURPOSE, secret)
    return pyotp.TOTP(secret, interval=TOTP_STEP).provisioning_uri(
        name=person.login or str(person.id), issuer_name=TOTP_ISSUER
    )


def qr_svg(uri: str) -> str:
    """The URI as an inline SVG QR code, for an authenticator app to scan."""
    return str(segno.make(uri, error="m").svg_inline(scale=5, dark="#0b2e59"))


def check_code(session: Session, settings: Settings, person: Principal, code: str) -> Attempt:
    """The second step: a TOTP code of the current time step or the one on either side, not
    used before. The first right code confirms an enrolment."""
    now = utcnow()
    locked = _locked(person, now)
    if locked is not None:
        return locked
    secret = decrypt(settings, TOTP_PURPOSE, person.totp_secret) if person.totp_secret else None
    if secret is None:
        return Attempt(person, refusal=Refusal.wrong_code)
    totp = pyotp.TOTP(secret, interval=TOTP_STEP)
    code = "".join(code.split())
    current = int(now.timestamp()) // TOTP_STEP
    for step in (current, current - 1, current + 1):
        if person.totp_last_step is not None and step <= person.totp_last_step:
            continue
        if code.isdigit() and hmac.compare_digest(totp.at(step * TOTP_STEP), code):
            person.totp_last_step = step
            person.failed_sign_ins = 0
            if person.totp_confirmed_at is None:
                person.totp_confirmed_at = now
            return Attempt(person, step=Step.done)
    return _fail(person, now, Refusal.wrong_code)


# -- Sessions -------------------------------------------------------------------------------------


def _serializer(key: bytes, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(key, salt=salt, signer_kwargs={"digest_method": hashlib.sha256})


def issue(session: Session, settings: Settings, person: Principal, *, pending: bool) -> str:
    """A signed token naming the person: a dashboard session, or (``pending``) the state
    between a right password and a right code."""
    salt = "dashboard-pending" if pending else "dashboard-session"
    began = utcnow().timestamp()
    return str(_serializer(signing_key(session, settings), salt).dumps([person.id, began]))


def redeem(session: Session, settings: Settings, token: str, *, pending: bool) -> Principal | None:
    """The person a token names, while it is good."""
    key = existing_signing_key(session, settings)
    if key is None or not token:
        return None
    salt = "dashboard-pending" if pending else "dashboard-session"
    good_for = PENDING_FOR if pending else SESSION_FOR
    try:
        person_id, began = _serializer(key, salt).loads(
            token, max_age=int(good_for.total_seconds())
        )
    except (BadData, TypeError, ValueError):
        return None
    person = session.get(Principal, person_id) if isinstance(person_id, int) else None
    if person is None or person.kind != PrincipalKind.person or person.password_hash is None:
        return None
    if not isinstance(began, int | float):
        return None
    if person.sessions_since is not None and began < person.sessions_since.timestamp():
        return None
    if utcnow().timestamp() - began > good_for.total_seconds():
        return None
    return person


def session_caller(session: Session, settings: Settings, token: str) -> Caller:
    """The caller a dashboard session stands for: the person with every role they hold."""
    person = redeem(session, settings, token, pending=False)
    if person is None:
        raise Unauthenticated("your dashboard session has ended")
    roles = roles_of(person)
    if not roles:
        raise Unauthenticated("this person holds no role")
    if needs_totp(person) and person.totp_confirmed_at is None:
        raise Unauthenticated("your dashboard session has ended")
    unit = session.get(Unit, person.unit_id)
    return Caller(
        key_id=None,
        name=person.name,
        role=first_role(roles),
        principal_id=person.id,
        principal_name=person.name,
        principal_kind=PrincipalKind.person,
        unit_id=person.unit_id,
        unit_name=unit.name if unit is not None else "",
        roles=roles,
    )


__all__ = [
    "MAX_FAILURES",
    "Attempt",
    "Refusal",
    "Role",
    "Step",
    "add_person",
    "check_code",
    "disable",
    "enrolment_uri",
    "find",
    "generate_password",
    "grant",
    "home_unit",
    "in_scope",
    "is_locked",
    "issue",
    "list_people",
    "needs_totp",
    "qr_svg",
    "redeem",
    "reset_totp",
    "revoke",
    "session_caller",
    "set_password",
    "sign_in_password",
    "units_by_id",
    "unlock",
]
