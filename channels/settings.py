"""An adapter's own settings: a pydantic-settings model read from ``DISPATCHER_<NAME>_*``.

The service's settings (:class:`dispatcher.core.config.Settings`) know nothing of any channel:
each adapter names its model (``Adapter.settings_model``), whose ``env_prefix`` gives its
variables (``DISPATCHER_TELEGRAM_`` + ``token``). A field may read a variable several channels
share by naming it as its ``validation_alias`` (``DISPATCHER_HTTP_TIMEOUT``, see
:mod:`channels.http`). Values come, strongest first, from code (a key named like the variable
without ``DISPATCHER_``, in lower case, given to the service's settings:
``Settings(telegram_token=...)``), the environment, the secrets directory
(``DISPATCHER_SECRETS_DIR``, one file per variable) and the field's default.

A bad value is a :class:`~dispatcher.core.config.ConfigError` naming its variable; every
installed channel's settings are read when a process starts
(:func:`channels.registry.check_settings`), so a typo stops the service at once rather than at
the first message on that channel.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Self

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from dispatcher.core.config import ENV_PREFIX, ConfigError, Settings


class ChannelSettings(BaseSettings):
    """Base of every adapter's settings (with no field of its own: a channel that needs none).

    A subclass sets ``model_config = SettingsConfigDict(env_prefix="DISPATCHER_SMS_")`` and
    declares its fields; required credentials are best left optional here and checked when the
    adapter is built, so that a deployment not using the channel need not set them.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
    )

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Each field's environment variable, by field name."""
        prefix = str(cls.model_config.get("env_prefix") or "")
        found = {}
        for name, info in cls.model_fields.items():
            alias = info.validation_alias
            found[name] = alias.upper() if isinstance(alias, str) else f"{prefix}{name}".upper()
        return found

    def required(self, fields: Iterable[str], channel: str) -> dict[str, str]:
        """The values of ``fields`` as text (secrets revealed), or a ValueError naming every
        environment variable among them that is not set."""
        values: dict[str, str] = {}
        missing: list[str] = []
        variables = self.variables()
        for field in fields:
            value = getattr(self, field)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if not value:
                missing.append(variables[field])
            else:
                values[field] = str(value)
        if missing:
            raise ValueError(f"the {channel} channel needs {', '.join(missing)} to be set")
        return values

    @classmethod
    def load(cls, given: Any = None) -> Self:
        """The settings, with values given in code taken from ``given``: the service's settings
        (their extra keys) or a mapping, keyed like ``telegram_token``.

        Raises :class:`ConfigError` naming every bad variable.
        """
        if isinstance(given, cls):
            return given
        values = _given(given)
        kwargs = {
            field: values[key]
            for field, variable in cls.variables().items()
            if (key := code_key(variable)) in values
        }
        secrets_dir = os.environ.get(f"{ENV_PREFIX}SECRETS_DIR")
        try:
            if secrets_dir:
                return cls(_secrets_dir=secrets_dir, **kwargs)
            return cls(**kwargs)
        except ValidationError as exc:
            raise ConfigError(
                "invalid configuration:\n  " + "\n  ".join(cls._problems(exc))
            ) from None

    @classmethod
    def _problems(cls, exc: ValidationError) -> list[str]:
        variables = cls.variables()
        by_alias = {v.lower(): v for v in variables.values()}
        problems = []
        for error in exc.errors():
            where = str(error["loc"][0]) if error["loc"] else "?"
            variable = variables.get(where) or by_alias.get(where.lower()) or where.upper()
            problems.append(f"{variable}: {error['msg']}")
        return problems

    def by_key(self) -> dict[str, Any]:
        """Every value keyed as in code (``smtp_password``), as the service's settings show
        them (``dispatcher config``)."""
        variables = self.variables()
        return {code_key(variables[name]): getattr(self, name) for name in variables}


def code_key(variable: str) -> str:
    """``DISPATCHER_SMTP_PASSWORD`` -> ``smtp_password``: how code names the setting."""
    return variable.removeprefix(ENV_PREFIX).lower()


def _given(given: Any) -> Mapping[str, Any]:
    if given is None:
        return {}
    if isinstance(given, Mapping):
        return given
    if isinstance(given, ChannelSettings):
        return given.by_key()
    return getattr(given, "__pydantic_extra__", None) or {}


class AllSettings(Settings):
    """The service's settings together with every installed channel's, as ``dispatcher config``
    shows them: a channel's values are extra keys named as in code (``smtp_password``), each
    checked by its adapter's own model (:func:`channels.registry.load_settings`)."""

    if TYPE_CHECKING:
        # A channel's setting is read by its name; which names exist depends on what is
        # installed.
        def __getattr__(self, name: str) -> Any: ...
