"""Channel accounts of organisational units: which Zalo OA, Facebook Page, Telegram bot, email
sender and relay, FCM project... a unit's campaigns send through.

An account is (unit, channel, name) and the adapter's own settings: the fields of the channel's
``settings_model`` (``app_id``, ``secret_key``, ``access_token``... for Zalo), checked by that
model and by the adapter itself (a missing credential is named) before anything is written. A
campaign sends through its unit's account for each channel, or its nearest ancestor's; the
root's account is the environment's settings (``DISPATCHER_<CHANNEL>_*``), so an install with
one unit changes nothing. The root unit has no row: its settings are the environment's.

An account's settings are its own and the model's defaults: nothing is taken from the root's
environment, except the variables several channels share (``DISPATCHER_HTTP_TIMEOUT``) for
settings that are not secret.

Where the secrets live:

- ``env_prefix``: read by every process from its environment, or from the secrets directory
  (``DISPATCHER_SECRETS_DIR``, one file per variable), as ``PREFIX`` + the field's name in
  capitals (``HN_ZALO_`` + ``ACCESS_TOKEN``); the database holds only the prefix;
- otherwise in the database, encrypted with a key from outside it (``DISPATCHER_SECRET_KEY``,
  :func:`dispatcher.core.secrets.encrypt`): whoever reads the database alone cannot read them.

Secrets are never returned (:func:`describe` says which fields are set) and never logged.
Every change bumps a version the workers read once per batch (with the time the tree of units
last changed), so they pick the new accounts up at their next batch
(:mod:`dispatcher.engine.accounts`).

An account's adapter keeps its state (a rotated Zalo token pair) under a scope of its unit and
its secret settings (:func:`state_scope`): two accounts of a unit on the same credentials share
it, as Zalo and ZNS share the environment's pair; new credentials start afresh, and the state
of credentials the unit no longer uses is deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import SecretStr, ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from channels import registry
from channels.base import AdapterContext
from channels.pool import Account
from channels.settings import ChannelSettings
from dispatcher.core.config import ENV_PREFIX, ConfigError, Settings
from dispatcher.core.secrets import NoOutsideKey, decrypt, encrypt
from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Invalid, NotFound
from dispatcher.kit.sql import insert_for
from dispatcher.tables.channel_accounts import ChannelAccount
from dispatcher.tables.channel_state import ChannelState
from dispatcher.tables.units import Unit
from dispatcher.units import service as units

PURPOSE = b"channel-account"
# The channel_state row whose value counts changes to accounts (workers compare it per batch).
VERSION_KEY = "dispatcher.accounts:version"
MAX_NAME = 200
PREFIX_PATTERN = re.compile(r"[A-Z][A-Z0-9_]{0,99}")


def account_key(channel: str, unit_code: str) -> str:
    """How rate limits, pauses, adapter state and logs name a unit's account."""
    return f"{channel}@{unit_code}"


# -- The adapter's settings model ---------------------------------------------------------------


def model_of(channel: str) -> type[ChannelSettings]:
    try:
        return registry.get(channel).settings_model
    except registry.UnknownChannel as exc:
        raise Invalid(str(exc), loc=["channel"]) from None


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret(arg) for arg in get_args(annotation))


def secret_fields(model: type[ChannelSettings]) -> set[str]:
    return {name for name, info in model.model_fields.items() if _is_secret(info.annotation)}


def _shared(model: type[ChannelSettings], name: str) -> bool:
    """Read from a variable several channels share (``DISPATCHER_HTTP_TIMEOUT``)."""
    return isinstance(model.model_fields[name].validation_alias, str)


def build(channel: str, values: Mapping[str, Any]) -> ChannelSettings:
    """The account's settings: ``values`` (by field name) checked by the channel's model, the
    other fields at their defaults (never the environment's credentials). Raises
    :class:`Invalid` naming every unknown, missing or bad field."""
    model = model_of(channel)
    fields = model.model_fields
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise Invalid(
            f"unknown field{'s' if len(unknown) > 1 else ''} of the {channel} channel: "
            f"{', '.join(unknown)}; its fields are {', '.join(sorted(fields))}",
            loc=["values", unknown[0]],
        )
    secrets = secret_fields(model)
    kwargs: dict[str, Any] = dict(values)
    for name, info in fields.items():
        if name in kwargs or (_shared(model, name) and name not in secrets):
            continue
        if not info.is_required():
            kwargs[name] = info.get_default(call_default_factory=True)
    try:
        found = model(**kwargs)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = str(error["loc"][0]) if error["loc"] else "?"
            by_alias = {
                str(i.validation_alias).lower(): n
                for n, i in fields.items()
                if isinstance(i.validation_alias, str)
            }
            where = by_alias.get(where.lower(), where)
            problems.append(f"{channel}.{where}: {error['msg']}")
        first = str(exc.errors()[0]["loc"][0]) if exc.errors()[0]["loc"] else "values"
        raise Invalid("; ".join(problems), loc=["values", first]) from None
    _check_adapter(channel, found)
    return found


def _check_adapter(channel: str, found: ChannelSettings) -> None:
    """Let the adapter build itself from the settings (no connection is opened): a credential
    it needs and does not have is named by field."""
    adapter = registry.get(channel)
    # Placeholders for the services an adapter is lent: only its settings are checked here.
    context = AdapterContext(services=defaultdict(object))
    try:
        adapter.create(found, context)
    except (ValueError, ConfigError) as exc:
        message = str(exc)
        for name, variable in found.variables().items():
            message = message.replace(variable, name)
        raise Invalid(f"{channel}: {message}", loc=["values"]) from None
    except Exception:  # noqa: S110 - an adapter that cannot be built without its services
        # (or a provider's answer) is checked when a worker opens it.
        pass


def read_environment(
    channel: str, prefix: str, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The settings ``PREFIX<FIELD>`` of the environment, or of the secrets directory."""
    environ = os.environ if environ is None else environ
    secrets_dir = environ.get(f"{ENV_PREFIX}SECRETS_DIR")
    found: dict[str, str] = {}
    for name in model_of(channel).model_fields:
        variable = f"{prefix}{name.upper()}"
        if variable in environ:
            found[name] = environ[variable]
        elif secrets_dir and (path := Path(secrets_dir) / variable).is_file():
            found[name] = path.read_text().strip()
    return found


def _check_prefix(prefix: str) -> str:
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise Invalid(
            f"bad environment prefix {prefix!r}: capital letters, digits and _ (e.g. HN_ZALO_)",
            loc=["env_prefix"],
        )
    if prefix.startswith(ENV_PREFIX):
        raise Invalid(
            f"the prefix {prefix!r} would read the service's own variables; use another "
            "(e.g. HN_ZALO_)",
            loc=["env_prefix"],
        )
    return prefix


# -- Changing accounts --------------------------------------------------------------------------


def _unit(session: Session, code: str) -> Unit:
    unit = session.scalar(select(Unit).where(Unit.code == code.strip()))
    if unit is None:
        raise NotFound(f"there is no unit with code {code.strip()!r}")
    return unit


def _sealed_values(settings: Settings, row: ChannelAccount) -> dict[str, Any]:
    if not row.sealed:
        return {}
    try:
        opened = decrypt(settings, PURPOSE, row.sealed)
    except NoOutsideKey:
        opened = None
    if opened is None:
        raise ValueError(
            f"the secrets of channel account {row.channel} of unit {row.unit_id} cannot be "
            "decrypted: DISPATCHER_SECRET_KEY is not set or is not the key they were saved with"
        )
    values: dict[str, Any] = json.loads(opened)
    return values


def set_account(
    session: Session,
    settings: Settings,
    *,
    unit_code: str,
    channel: str,
    name: str | None = None,
    values: Mapping[str, Any] | None = None,
    env_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ChannelAccount:
    """Create or replace ``unit_code``'s account for ``channel``, after checking it whole.

    ``values`` are kept in the database (secret ones encrypted); with ``env_prefix`` the
    others are read from each process's environment, and must be set in this one now.
    """
    unit = _unit(session, unit_code)
    if unit.parent_id is None:
        raise Invalid(
            f"the root unit {unit.code}'s accounts are the environment's settings "
            f"(DISPATCHER_{channel.upper()}_*); accounts are for the units below it",
            loc=["unit"],
        )
    model = model_of(channel)
    given = dict(values or {})
    prefix = _check_prefix(env_prefix) if env_prefix else None
    from_env = read_environment(channel, prefix, environ) if prefix else {}
    if prefix and not from_env:
        raise Invalid(
            f"no variable {prefix}<FIELD> is set for the {channel} channel; its fields are "
            f"{', '.join(sorted(model.model_fields))}",
            loc=["env_prefix"],
        )
    checked = build(channel, {**from_env, **given})
    label = (name or f"{channel} {unit.code}").strip()
    if not label or len(label) > MAX_NAME:
        raise Invalid(f"an account's name has 1 to {MAX_NAME} characters", loc=["name"])
    secrets = secret_fields(model)
    plain = checked.model_dump(mode="json", include=set(given) - secrets)
    hidden = {
        field: value.get_secret_value() if isinstance(value, SecretStr) else value
        for field in sorted(set(given) & secrets)
        if (value := getattr(checked, field)) is not None
    }
    sealed = None
    if hidden:
        try:
            sealed = encrypt(settings, PURPOSE, json.dumps(hidden, sort_keys=True))
        except NoOutsideKey as exc:
            raise Invalid(
                f"{exc}; or keep the secrets in the environment (an environment prefix)",
                loc=["values"],
            ) from None
    row = session.scalar(
        select(ChannelAccount).where(
            ChannelAccount.unit_id == unit.id, ChannelAccount.channel == channel
        )
    )
    now = utcnow()
    if row is None:
        row = ChannelAccount(unit_id=unit.id, channel=channel, created_at=now)
        session.add(row)
        changed = True
    else:
        try:
            before = (row.values, _sealed_values(settings, row), row.env_prefix)
        except ValueError:
            # Secrets saved with another key: whatever they were, they are replaced.
            before = None
        changed = before != (plain, hidden, prefix)
    row.name = label
    row.values = plain
    row.sealed = sealed
    row.env_prefix = prefix
    row.updated_at = now
    session.flush()
    if changed:
        _forget_state(session, settings, unit)
    _bump(session)
    return row


def delete_account(
    session: Session, settings: Settings, *, unit_code: str, channel: str
) -> ChannelAccount:
    unit = _unit(session, unit_code)
    row = session.scalar(
        select(ChannelAccount).where(
            ChannelAccount.unit_id == unit.id, ChannelAccount.channel == channel
        )
    )
    if row is None:
        raise NotFound(f"unit {unit.code} has no account of its own for {channel}")
    session.delete(row)
    session.flush()
    _forget_state(session, settings, unit)
    _bump(session)
    return row


def state_scope(unit_code: str, found: ChannelSettings) -> str:
    """Where the adapter of an account keeps its state: ``@UNIT.<digest of its secrets>``."""
    model = type(found)
    secret = {}
    for name in sorted(secret_fields(model)):
        value = getattr(found, name)
        if value is not None:
            secret[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
    digest = hashlib.blake2b(
        json.dumps(secret, sort_keys=True).encode(), digest_size=6, person=b"chan-state"
    ).hexdigest()
    return f"@{unit_code}.{digest}"


def _forget_state(session: Session, settings: Settings, unit: Unit) -> None:
    """Delete the state the unit's adapters kept for credentials none of its accounts uses."""
    session.flush()
    rows = session.scalars(select(ChannelAccount).where(ChannelAccount.unit_id == unit.id))
    found = [account_of(session, settings, row) for row in rows]
    if any(account.problem for account in found):
        # An account whose secrets cannot be read now may still own some of that state.
        return
    used = {account.state_scope for account in found}
    prefix = f"@{unit.code}."
    keys = session.scalars(
        select(ChannelState.key).where(ChannelState.key.startswith(prefix, autoescape=True))
    ).all()
    stale = [key for key in keys if key.partition("/")[0] not in used]
    if stale:
        session.execute(delete(ChannelState).where(ChannelState.key.in_(stale)))


def _bump(session: Session) -> None:
    """Mark that accounts changed: a new random value (two changes at once never share one)."""
    value = secrets.token_hex(8)
    now = utcnow()
    statement = insert_for(session, ChannelState).values(
        key=VERSION_KEY, value=value, updated_at=now
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["key"], set_={"value": value, "updated_at": now}
        )
    )


def version(session: Session) -> str:
    """What changed last among accounts ("": no account was ever set)."""
    value = session.scalar(select(ChannelState.value).where(ChannelState.key == VERSION_KEY))
    return value or ""


def stamp(session: Session) -> tuple[str, Any]:
    """What resolution depends on, in one statement: the accounts' version and the last change
    to the tree of units (a unit moved under another parent changes its nearest ancestors)."""
    row = session.execute(
        select(
            select(ChannelState.value).where(ChannelState.key == VERSION_KEY).scalar_subquery(),
            select(func.max(Unit.updated_at)).scalar_subquery(),
        )
    ).one()
    return (row[0] or "", row[1])


# -- Reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountView:
    """An account as the API and the command line show it: never a secret's value."""

    unit: str
    channel: str
    name: str
    key: str
    source: str  # "database" or "environment"
    env_prefix: str | None
    # Every field of the channel's settings the account sets, secret or not.
    set_fields: list[str]
    # The values of the fields that are not secret.
    values: dict[str, Any]
    # Why the account cannot be used now (its secrets cannot be decrypted), if so.
    problem: str | None = None


def describe(session: Session, settings: Settings, row: ChannelAccount) -> AccountView:
    unit = session.get(Unit, row.unit_id)
    assert unit is not None
    set_fields = set(row.values)
    problem = None
    try:
        # Only the names of the secret fields leave this function.
        set_fields |= set(_sealed_values(settings, row))
    except ValueError as exc:
        problem = str(exc)
    if row.env_prefix:
        set_fields |= set(read_environment(row.channel, row.env_prefix))
    return AccountView(
        unit=unit.code,
        channel=row.channel,
        name=row.name,
        key=account_key(row.channel, unit.code),
        source="environment" if row.env_prefix else "database",
        env_prefix=row.env_prefix,
        set_fields=sorted(set_fields),
        values=dict(sorted(row.values.items())),
        problem=problem,
    )


def list_accounts(
    session: Session, settings: Settings, unit_code: str | None = None
) -> list[AccountView]:
    query = select(ChannelAccount).join(Unit, Unit.id == ChannelAccount.unit_id)
    if unit_code is not None:
        query = query.where(ChannelAccount.unit_id == _unit(session, unit_code).id)
    rows = session.scalars(query.order_by(Unit.code, ChannelAccount.channel))
    return [describe(session, settings, row) for row in rows]


def resolve(
    session: Session,
    settings: Settings,
    unit_id: int | None,
    channels: Sequence[str],
    environ: Mapping[str, str] | None = None,
) -> dict[str, Account]:
    """The account each of ``channels`` sends through for ``unit_id``'s campaigns: the unit's
    own, else its nearest ancestor's, else the root's (the environment's settings).

    An account whose settings cannot be read now (a secret that cannot be decrypted, a
    variable gone from the environment) is returned with its ``problem``: its sends wait, as
    for a refused credential, rather than go through another unit's account.
    """
    found = {channel: Account.root(channel) for channel in channels}
    if unit_id is None or not channels:
        return found
    chain = units.ancestors(session, unit_id)
    rows = session.scalars(
        select(ChannelAccount).where(
            ChannelAccount.unit_id.in_(chain), ChannelAccount.channel.in_(list(channels))
        )
    ).all()
    nearest: dict[str, ChannelAccount] = {}
    for row in sorted(rows, key=lambda r: chain.index(r.unit_id), reverse=True):
        nearest[row.channel] = row
    for channel, row in nearest.items():
        found[channel] = account_of(session, settings, row, environ)
    return found


def account_of(
    session: Session,
    settings: Settings,
    row: ChannelAccount,
    environ: Mapping[str, str] | None = None,
) -> Account:
    unit = session.get(Unit, row.unit_id)
    assert unit is not None
    key = account_key(row.channel, unit.code)
    revision = hashlib.blake2b(
        json.dumps([row.id, row.values, row.sealed, row.env_prefix], sort_keys=True).encode(),
        digest_size=8,
    ).hexdigest()
    try:
        values: dict[str, Any] = {}
        if row.env_prefix:
            values.update(read_environment(row.channel, row.env_prefix, environ))
        values.update(row.values)
        values.update(_sealed_values(settings, row))
        checked = build(row.channel, values)
    except (ValueError, Invalid) as exc:
        return Account(row.channel, key, None, revision, problem=_problem(exc))
    return Account(row.channel, key, checked, revision, state_scope=state_scope(unit.code, checked))


def _problem(exc: Exception) -> str:
    message = exc.message if isinstance(exc, Invalid) else str(exc)
    return f"channel account unusable: {message}"
