"""The OpenAPI document, with every error answer an operation can give.

FastAPI documents what a route returns when it succeeds and, for routes with parameters, the
422 of a validation error. The other errors come from what the route depends on, so they are
declared here once, from the operation itself, for every route including those added later:

- a route that needs a key (the operation has ``security``) answers 401 and 403;
- a path parameter names something that may not exist: 404;
- any parameter or body can be wrong: 422 (the validation error's shape);
- a method that writes can conflict with the current state or a concurrent change: 409;
- a request dependency marked with ``dispatcher.kit.errors.answers`` adds its own answers
  (the sender's rate limit: 429 with ``Retry-After``).

Every error body but the 422's is ``ErrorOut``: ``{"detail": "what is wrong"}``. A route
documents a further answer of its own with ``responses=`` (its entry wins).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import validation_error_definition, validation_error_response_definition
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from dispatcher.kit.errors import Answers, ErrorOut

REF = "#/components/schemas/"
WRITES = {"POST", "PUT", "PATCH", "DELETE"}

_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
}


def _error(description: str, status: int) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"{REF}ErrorOut"}}},
    }
    if status in _HEADERS:
        answer["headers"] = _HEADERS[status]
    return answer


def _calls(dependant: Dependant | None) -> Iterator[Any]:
    for dependency in dependant.dependencies if dependant is not None else ():
        yield dependency.call
        yield from _calls(dependency)


def _answers(route: Any, operation: dict[str, Any], method: str) -> Answers:
    found: Answers = {}
    if operation.get("security"):
        found[401] = "No usable API key: missing, unknown, expired or revoked."
        found[403] = "The key's role may not do this, or the two-person rule forbids it."
    parameters = operation.get("parameters", [])
    if any(p.get("in") == "path" for p in parameters):
        found[404] = "What the path names does not exist."
    if method in WRITES:
        found[409] = "The current state does not allow this, or a concurrent change conflicted."
    for call in _calls(route.dependant):
        found.update(getattr(call, "__answers__", {}))
    return found


def document_errors(schema: dict[str, Any], routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """Adds to ``schema`` (an OpenAPI document of ``routes``) the error answers of every
    operation, and the error models they refer to."""
    # Routes of included routers come with the router's own dependencies (its key check).
    for route in iter_route_contexts(routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        for method in (route.methods or set()) - {"HEAD"}:
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in sorted(_answers(route, operation, method).items()):
                responses.setdefault(str(status), _error(description, status))
            for status, answer in responses.items():
                # A route's own ``responses=`` may describe an error without its body: it is
                # the same error model as every other.
                if status.isdigit() and int(status) >= 400 and "content" not in answer:
                    answer.update(_error(answer.get("description", ""), int(status)))
            if operation.get("parameters") or operation.get("requestBody"):
                responses.setdefault(
                    "422",
                    {
                        "description": "Validation Error: each entry names a field (loc).",
                        "content": {
                            "application/json": {"schema": {"$ref": f"{REF}HTTPValidationError"}}
                        },
                    },
                )
            operation["responses"] = dict(sorted(responses.items()))
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorOut"] = ErrorOut.model_json_schema(ref_template=REF + "{model}")
    schemas.setdefault("ValidationError", validation_error_definition)
    schemas.setdefault("HTTPValidationError", validation_error_response_definition)
    return schema
