"""Channel accounts of units: which account a unit's campaigns send through (its own, its
nearest ancestor's, the environment's), their checks (all or nothing, naming the field), and
their secrets, which no answer, listing or log line shows."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from typer.testing import CliRunner

from dispatcher.cli import app
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine.accounts import AccountResolver
from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Invalid, NotFound
from dispatcher.tables.channel_accounts import ChannelAccount
from dispatcher.tables.channel_state import ChannelState
from dispatcher.units import accounts, service
from tests.deliveries.conftest import configure

OUTSIDE_KEY = "khoa-ngoai-co-so-du-lieu-0123456789"
TELEGRAM_TOKEN = "7000000001:AAbbccddeeffgghhiijjkkllmmnnooppqqr"
ZALO = {
    "app_id": "3456789012345678901",
    "secret_key": "zalo-secret-of-hanoi-oa-0123456789",
    "access_token": "zat_hanoi_access_token_abcdefghijklmnopqrstuvwxyz",
    "refresh_token": "zrt_hanoi_refresh_token_abcdefghijklmnopqrstuvwxyz",
    "api_url": "https://openapi.zalo.test",
}
SECRETS = [TELEGRAM_TOKEN, ZALO["secret_key"], ZALO["access_token"], ZALO["refresh_token"]]


def make_units(db: Database) -> dict[str, int]:
    """The root, a region and two sibling provinces below it."""
    with db.transaction() as session:
        service.apply(
            session,
            [
                service.UnitSpec("KV1", "BHXH khu vực I", "VN", ("01", "24")),
                service.UnitSpec("HN", "BHXH thành phố Hà Nội", "KV1", ("01",)),
                service.UnitSpec("BN", "BHXH tỉnh Bắc Ninh", "KV1", ("24",)),
            ],
        )
        return {u.code: u.id for u in service.all_units(session)}


@pytest.fixture()
def keyed(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings with a key from outside the database, for secrets kept in it."""
    configure(monkeypatch, {"SECRET_KEY": OUTSIDE_KEY})
    return settings.model_copy(update={"secret_key": SecretStr(OUTSIDE_KEY)})


def test_own_account_nearest_ancestor_then_the_environment(keyed: Settings, db: Database):
    ids = make_units(db)
    with db.transaction() as session:
        accounts.set_account(
            session, keyed, unit_code="KV1", channel="telegram", values={"token": TELEGRAM_TOKEN}
        )
        accounts.set_account(session, keyed, unit_code="HN", channel="zalo", values=ZALO)
    resolver = AccountResolver(db, keyed)
    hanoi = resolver.resolve(ids["HN"], ["zalo", "telegram", "email"])
    assert {c: a.key for c, a in hanoi.items()} == {
        "zalo": "zalo@HN",
        "telegram": "telegram@KV1",
        "email": "email",
    }
    zalo = hanoi["zalo"].settings
    assert zalo is not None
    assert zalo.access_token.get_secret_value() == ZALO["access_token"]  # type: ignore[attr-defined]
    assert hanoi["email"].is_root and hanoi["email"].settings is None
    bac_ninh = resolver.resolve(ids["BN"], ["zalo", "telegram"])
    assert {c: a.key for c, a in bac_ninh.items()} == {"zalo": "zalo", "telegram": "telegram@KV1"}
    root = resolver.resolve(ids["VN"], ["zalo", "telegram"])
    assert all(a.is_root for a in root.values())

    # A change reaches the resolver at its next batch: the version moved.
    with db.transaction() as session:
        accounts.set_account(session, keyed, unit_code="BN", channel="zalo", values=ZALO)
        accounts.delete_account(session, keyed, unit_code="KV1", channel="telegram")
    again = resolver.resolve(ids["BN"], ["zalo", "telegram"])
    assert {c: a.key for c, a in again.items()} == {"zalo": "zalo@BN", "telegram": "telegram"}


def test_an_account_takes_nothing_from_the_environments_credentials(
    keyed: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
):
    configure(monkeypatch, {"ZALO_ACCESS_TOKEN": "zat_root_token", "ZALO_APP_ID": "1"})
    make_units(db)
    with db.transaction() as session, pytest.raises(Invalid) as refused:
        accounts.set_account(
            session, keyed, unit_code="HN", channel="zalo", values={"app_id": "42"}
        )
    # The root's token does not fill the unit's gap: the missing fields are named.
    assert "secret_key" in refused.value.message and "access_token" in refused.value.message


@pytest.mark.parametrize(
    ("channel", "values", "said"),
    [
        pytest.param("sms", {"token": "x"}, "unknown channel 'sms'", id="unknown channel"),
        pytest.param(
            "telegram",
            {"token": "x", "colour": "red"},
            "unknown field of the telegram channel: colour",
            id="unknown field",
        ),
        pytest.param(
            "zalo",
            {k: v for k, v in ZALO.items() if k != "refresh_token"},
            "refresh_token",
            id="missing required field",
        ),
        pytest.param("zalo", {**ZALO, "api_url": "not a url"}, "zalo.api_url", id="bad value"),
        pytest.param(
            "email", {"port": "many", "sender": "a@b.test"}, "email.port", id="bad number"
        ),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(
    keyed: Settings, db: Database, channel: str, values: dict[str, Any], said: str
):
    make_units(db)
    with db.transaction() as session, pytest.raises(Invalid) as refused:
        accounts.set_account(session, keyed, unit_code="HN", channel=channel, values=values)
    assert said in refused.value.message
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(ChannelAccount)) == 0
        assert accounts.version(session) == ""


def test_the_root_has_no_row_and_an_unknown_unit_is_named(keyed: Settings, db: Database):
    make_units(db)
    with db.transaction() as session:
        with pytest.raises(Invalid, match="environment's settings"):
            accounts.set_account(session, keyed, unit_code="VN", channel="zalo", values=ZALO)
        with pytest.raises(NotFound, match="'XX'"):
            accounts.set_account(session, keyed, unit_code="XX", channel="zalo", values=ZALO)


def test_secrets_in_the_database_need_the_outside_key(settings: Settings, db: Database):
    make_units(db)
    assert settings.secret_key is None
    with db.transaction() as session, pytest.raises(Invalid, match="DISPATCHER_SECRET_KEY"):
        accounts.set_account(session, settings, unit_code="HN", channel="zalo", values=ZALO)


def test_secrets_are_encrypted_and_never_answered_listed_or_logged(
    client: Any,
    keyed: Settings,
    db: Database,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
):
    caplog.set_level(logging.DEBUG)
    make_units(db)
    put = client.put("/v1/units/HN/accounts/zalo", json={"name": "OA Hà Nội", "values": ZALO})
    assert put.status_code == 200, put.text
    shown = put.json()
    assert shown["key"] == "zalo@HN" and shown["source"] == "database"
    assert shown["set_fields"] == sorted(ZALO)
    assert shown["values"] == {"api_url": ZALO["api_url"], "app_id": ZALO["app_id"]}

    listed = client.get("/v1/units/HN/accounts")
    assert listed.status_code == 200 and [a["key"] for a in listed.json()] == ["zalo@HN"]

    bad = client.put("/v1/units/HN/accounts/zalo", json={"values": {**ZALO, "colour": "x"}})
    assert bad.status_code == 422 and "colour" in bad.text
    # A value of the wrong shape is named, not repeated.
    shape = client.put(
        "/v1/units/HN/accounts/zalo",
        json={"values": {**ZALO, "access_token": {"token": ZALO["access_token"]}}},
    )
    assert shape.status_code == 422 and "zalo.access_token" in shape.text
    assert client.put("/v1/units/XX/accounts/zalo", json={"values": ZALO}).status_code == 404

    # The command line, from a file and from the environment.
    account_file = tmp_path / "bn.yaml"
    account_file.write_text(f"name: Bot Bắc Ninh\nsettings:\n  token: '{TELEGRAM_TOKEN}'\n")
    runner = CliRunner()
    from_file = runner.invoke(
        app, ["accounts", "set", "BN", "telegram", "--file", str(account_file)]
    )
    assert from_file.exit_code == 0, from_file.output
    listing = runner.invoke(app, ["accounts", "list"])
    assert listing.exit_code == 0 and "zalo@HN" in listing.output
    assert "telegram@BN" in listing.output and "token" in listing.output

    with db.transaction() as session:
        stored = session.scalars(select(ChannelAccount)).all()
        raw = repr([(r.values, r.sealed, r.env_prefix) for r in stored])
        state = repr(session.scalars(select(ChannelState.value)).all())
    texts = {
        "answers": put.text + listed.text + bad.text + shape.text,
        "command line": from_file.output + listing.output,
        "database": raw + state,
        "logs": caplog.text + "".join(capsys.readouterr()),
    }
    for where, text in texts.items():
        leaked = [s for s in SECRETS if s in text]
        assert not leaked, f"in the {where}: {leaked}"

    deleted = client.delete("/v1/units/HN/accounts/zalo")
    assert deleted.status_code == 200 and "zalo@HN" not in client.get("/v1/units/HN/accounts").text
    assert client.delete("/v1/units/HN/accounts/zalo").status_code == 404


def test_an_account_from_the_environment_keeps_only_its_prefix(
    keyed: Settings, db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    ids = make_units(db)
    monkeypatch.setenv("HN_ZALO_APP_ID", ZALO["app_id"])
    monkeypatch.setenv("HN_ZALO_ACCESS_TOKEN", ZALO["access_token"])
    monkeypatch.setenv("HN_ZALO_REFRESH_TOKEN", ZALO["refresh_token"])
    # One secret from the secrets directory, one file per variable.
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "HN_ZALO_SECRET_KEY").write_text(ZALO["secret_key"] + "\n")
    monkeypatch.setenv("DISPATCHER_SECRETS_DIR", str(secrets_dir))

    bad = CliRunner().invoke(app, ["accounts", "set", "HN", "zalo", "--from-env", "hn_zalo"])
    assert bad.exit_code == 2 and "prefix" in bad.output
    result = CliRunner().invoke(app, ["accounts", "set", "HN", "zalo", "--from-env", "HN_ZALO_"])
    assert result.exit_code == 0, result.output
    with db.transaction() as session:
        (row,) = session.scalars(select(ChannelAccount)).all()
        assert (row.values, row.sealed, row.env_prefix) == ({}, None, "HN_ZALO_")
    found = AccountResolver(db, keyed).resolve(ids["HN"], ["zalo"])["zalo"]
    assert found.key == "zalo@HN" and found.problem is None
    assert found.settings.secret_key.get_secret_value() == ZALO["secret_key"]  # type: ignore[union-attr]


def test_resuming_an_account_of_an_unknown_unit_is_refused(settings: Settings, db: Database):
    make_units(db)
    result = CliRunner().invoke(app, ["channels", "resume", "zalo@XX"])
    assert result.exit_code == 2 and "'XX'" in result.output


def test_an_admin_reaches_the_accounts_of_their_unit_and_below_only(
    client: Any, keyed: Settings, db: Database
):
    from dispatcher.auth.service import create_key
    from dispatcher.tables.auth import PersonRole, Principal

    ids = make_units(db)
    headers = {}
    with db.transaction() as session:
        for unit in ("KV1", "BN"):
            person = Principal(kind="person", name=f"Quản trị {unit}", unit_id=ids[unit])
            session.add(person)
            session.flush()
            session.add(PersonRole(principal_id=person.id, role="admin"))
            session.flush()
            _, key = create_key(session, role="admin", name=f"admin {unit}", owner=person)
            headers[unit] = {"Authorization": f"Bearer {key}"}
    body = {"values": {"token": TELEGRAM_TOKEN}}
    own = client.put("/v1/units/HN/accounts/telegram", json=body, headers=headers["KV1"])
    assert own.status_code == 200, own.text
    # A sibling's admin: as if the unit did not exist, for reading, changing and deleting.
    assert client.get("/v1/units/HN/accounts", headers=headers["BN"]).status_code == 404
    put = client.put("/v1/units/HN/accounts/telegram", json=body, headers=headers["BN"])
    assert put.status_code == 404
    gone = client.delete("/v1/units/HN/accounts/telegram", headers=headers["BN"])
    assert gone.status_code == 404
    assert client.get("/v1/units/KV1/accounts", headers=headers["BN"]).status_code == 404
    # The region's admin and the root's see it.
    for who in (headers["KV1"], {}):
        listed = client.get("/v1/units/HN/accounts", headers=who)
        assert [a["key"] for a in listed.json()] == ["telegram@HN"]


def test_a_unit_moved_under_another_parent_resolves_through_its_new_ancestors(
    keyed: Settings, db: Database
):
    ids = make_units(db)
    with db.transaction() as session:
        service.apply(session, [service.UnitSpec("KV2", "BHXH khu vực II", "VN", ("79",))])
        accounts.set_account(
            session, keyed, unit_code="KV1", channel="telegram", values={"token": TELEGRAM_TOKEN}
        )
    resolver = AccountResolver(db, keyed)
    assert resolver.resolve(ids["BN"], ["telegram"])["telegram"].key == "telegram@KV1"
    with db.transaction() as session:
        service.apply(
            session,
            [
                service.UnitSpec("KV1", "BHXH khu vực I", "VN", ("01",)),
                service.UnitSpec("KV2", "BHXH khu vực II", "VN", ("79", "24")),
                service.UnitSpec("BN", "BHXH tỉnh Bắc Ninh", "KV2", ("24",)),
            ],
        )
    assert resolver.resolve(ids["BN"], ["telegram"])["telegram"].key == "telegram"


def test_state_is_kept_per_unit_and_credentials(keyed: Settings, db: Database):
    """Zalo and ZNS of one unit on the same OA share their rotated pair (as the environment's
    do); new credentials start afresh, and the state of the old ones is deleted."""
    ids = make_units(db)
    zns = {k: ZALO[k] for k in ("app_id", "secret_key", "access_token", "refresh_token")}

    def scopes() -> dict[str, str | None]:
        found = AccountResolver(db, keyed).resolve(ids["HN"], ["zalo", "zns"])
        return {channel: account.state_scope for channel, account in found.items()}

    def stored() -> list[str]:
        with db.transaction() as session:
            return list(session.scalars(select(ChannelState.key).where(ChannelState.key != "x")))

    with db.transaction() as session:
        accounts.set_account(session, keyed, unit_code="HN", channel="zalo", values=ZALO)
        accounts.set_account(session, keyed, unit_code="HN", channel="zns", values=zns)
    first = scopes()
    assert first["zalo"] == first["zns"] and str(first["zalo"]).startswith("@HN.")
    kept = f"{first['zalo']}/zalo:refresh_token"
    with db.transaction() as session:
        session.add(ChannelState(key=kept, value="zrt_rotated", updated_at=utcnow()))
        # The same settings again: the rotated pair stays.
        accounts.set_account(session, keyed, unit_code="HN", channel="zalo", values=ZALO)
    assert kept in stored()
    with db.transaction() as session:
        other = {**ZALO, "refresh_token": "zrt_another_oa_token"}
        accounts.set_account(session, keyed, unit_code="HN", channel="zalo", values=other)
    # ZNS still uses the old credentials: their state stays until it stops.
    assert kept in stored() and scopes()["zalo"] != first["zalo"]
    with db.transaction() as session:
        accounts.delete_account(session, keyed, unit_code="HN", channel="zns")
    assert kept not in stored()


def test_secrets_saved_with_another_key_make_the_account_wait_not_fall_back(
    keyed: Settings, db: Database
):
    ids = make_units(db)
    with db.transaction() as session:
        accounts.set_account(session, keyed, unit_code="HN", channel="zalo", values=ZALO)
    other = keyed.model_copy(update={"secret_key": SecretStr("mot-khoa-khac-0123456789")})
    found = AccountResolver(db, other).resolve(ids["HN"], ["zalo"])["zalo"]
    # Its own key, no settings, and the reason: its sends pause (an AuthError), and never go
    # through the environment's account.
    assert found.key == "zalo@HN" and found.settings is None
    assert found.problem and "DISPATCHER_SECRET_KEY" in found.problem
    with db.transaction() as session:
        (view,) = accounts.list_accounts(session, other)
    assert view.problem and view.set_fields == ["api_url", "app_id"]


def test_an_unusable_account_pauses_itself_alone(settings: Settings) -> None:
    from channels.base import Category, Message
    from channels.pool import Account, AdapterPool
    from dispatcher.engine import ratelimit
    from dispatcher.engine.retry import RetryPolicy
    from dispatcher.engine.send import Sender
    from dispatcher.engine.work import Work

    limiter = ratelimit.MemoryLimiter()
    sender = Sender(
        settings=settings,
        adapters=AdapterPool(settings),
        policy=RetryPolicy.from_settings(settings),
        limiter=limiter,
    )
    broken = Account("telegram", "telegram@HN", None, "r1", problem="channel account unusable")
    item = Work(1, 1, "telegram", 0, 0, False, account=broken)
    item.message = Message(delivery_id=1, address="7001", body="BHXH", kind=Category.policy_news)
    asyncio.run(sender.send_all([item]))
    assert (item.status.value, item.error_class) == ("retrying", "auth")
    assert limiter.paused_locally("telegram@HN") > 0
    assert limiter.paused_locally("telegram") == 0
