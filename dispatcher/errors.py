"""Errors a service raises for the HTTP layer to turn into a status and a clear message."""

from __future__ import annotations

from collections.abc import Sequence


class ServiceError(Exception):
    status_code = 400

    def __init__(self, message: str, *, loc: Sequence[str | int] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc = list(loc) if loc else None


class NotFound(ServiceError):
    status_code = 404


class Forbidden(ServiceError):
    """The caller may not do this, whatever its role (the two-person rule)."""

    status_code = 403


class Conflict(ServiceError):
    """A state transition or write that the current state does not allow."""

    status_code = 409


class Invalid(ServiceError):
    """Well-formed input that is wrong in substance; ``loc`` names the field."""

    status_code = 422
