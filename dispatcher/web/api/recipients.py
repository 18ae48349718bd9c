from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from dispatcher.auth.service import Role
from dispatcher.kit import json_depth
from dispatcher.kit.errors import NotFound
from dispatcher.recipients import service
from dispatcher.recipients.schemas import RecipientIn, RecipientOut, UpsertSummary
from dispatcher.units import scope as scopes
from dispatcher.web.http.callers import Editor, EditorOrOperator
from dispatcher.web.http.deps import AppSettings, DbSession

router = APIRouter(prefix="/v1/recipients", tags=["recipients"])

MAX_PER_REQUEST = 10_000
# Who reads a recipient's addresses in full: those who write them. Everyone else who may read
# a recipient (operators) sees them masked.
FULL_ADDRESSES = frozenset({Role.editor, Role.admin})
_one_or_many: TypeAdapter[Any] = TypeAdapter(RecipientIn)
_many: TypeAdapter[list[RecipientIn]] = TypeAdapter(list[RecipientIn])

_ONE = RecipientIn.model_json_schema()
_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _ONE,
                        {"type": "array", "items": _ONE, "maxItems": MAX_PER_REQUEST},
                    ]
                }
            }
        },
    }
}


async def _parse(request: Request, max_depth: int) -> RecipientIn | list[RecipientIn]:
    # The body is read whatever its content type: the app's depth guard skips form and file
    # types, so the bound is applied here too.
    try:
        payload = json_depth.loads(await request.body(), max_depth)
    except json_depth.TooDeep as exc:
        raise RequestValidationError([json_depth.too_deep_error(exc)]) from None
    except ValueError:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body",),
                    "msg": "body is not valid JSON",
                    "input": None,
                }
            ]
        ) from None
    try:
        if isinstance(payload, list):
            if len(payload) > MAX_PER_REQUEST:
                raise RequestValidationError(
                    [
                        {
                            "type": "too_long",
                            "loc": ("body",),
                            "msg": f"at most {MAX_PER_REQUEST} recipients per request; "
                            "use /v1/recipients/import for files",
                            "input": None,
                        }
                    ]
                )
            return _many.validate_python(payload)
        return _one_or_many.validate_python(payload)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


@router.post(
    "",
    response_model=RecipientOut | UpsertSummary,
    openapi_extra=_BODY_SCHEMA,
    responses={201: {"model": RecipientOut}, 200: {"model": RecipientOut | UpsertSummary}},
    summary="Create or update one recipient (object) or many (array), by external_id",
)
async def upsert_recipients(
    request: Request,
    response: Response,
    session: DbSession,
    caller: Editor,
    settings: AppSettings,
) -> RecipientOut | UpsertSummary:
    body = await _parse(request, settings.json_max_depth)
    # Blocking database work never runs on the event loop: a request waiting there for
    # SQLite's write lock would stall every other request, including the lock's holder.
    return await run_in_threadpool(_upsert, body, response, session)


def _upsert(
    body: RecipientIn | list[RecipientIn], response: Response, session: DbSession
) -> RecipientOut | UpsertSummary:
    items = body if isinstance(body, list) else [body]
    scopes.check_recipients(
        session, [(i.external_id, i.province) for i in items], many=isinstance(body, list)
    )
    recipients, created = service.upsert_many(session=session, items=items)
    if isinstance(body, list):
        return UpsertSummary(
            count=len(recipients), created=created, updated=len(recipients) - created
        )
    response.status_code = 201 if created else 200
    return service.to_out(recipients[0])


@router.get(
    "/{external_id}",
    response_model=RecipientOut,
    description="Editors and admins see the addresses in full; operators see them masked "
    "(`ng***@gmail.com`, `+84 9** *** 678`), as in the delivery search.",
)
def get_recipient(external_id: str, session: DbSession, caller: EditorOrOperator) -> RecipientOut:
    recipient = service.get_by_external_id(session=session, external_id=external_id)
    if recipient is None:
        raise NotFound(f"recipient {external_id!r} does not exist")
    return service.to_out(recipient, masked=not caller.roles & FULL_ADDRESSES)
