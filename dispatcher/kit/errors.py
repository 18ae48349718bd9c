"""Errors a service raises for the HTTP layer to turn into a status and a clear message."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

F = TypeVar("F", bound=Callable[..., Any])


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


class ErrorOut(BaseModel):
    """The body of every error answer but a validation error (422): what is wrong, in a sentence."""

    detail: str


Answers = dict[int, str]


def answers(status: int, description: str) -> Callable[[F], F]:
    """Marks a request dependency as one that can answer ``status``: every route depending on
    it, however indirectly, documents that answer (see ``dispatcher.web.http.openapi``)."""

    def mark(dependency: F) -> F:
        declared: Answers = {**getattr(dependency, "__answers__", {}), status: description}
        dependency.__answers__ = declared  # type: ignore[attr-defined]
        return dependency

    return mark
