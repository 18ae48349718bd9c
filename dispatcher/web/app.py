"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from fastapi_offline import FastAPIOffline
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from starlette.exceptions import HTTPException

from dispatcher.content import isolation as content_checks
from dispatcher.content import service as content
from dispatcher.content.render import TemplateProblem
from dispatcher.core.config import Settings, get_settings
from dispatcher.core.db import get_database
from dispatcher.engine import backends
from dispatcher.kit.errors import Invalid, ServiceError
from dispatcher.kit.json_depth import JsonDepthGuard
from dispatcher.web.api.accounts import router as accounts_router
from dispatcher.web.api.audiences import router as audiences_router
from dispatcher.web.api.auth import router as keys_router
from dispatcher.web.api.campaigns import messages as messages_router
from dispatcher.web.api.campaigns import router as campaigns_router
from dispatcher.web.api.consent import router as unsubscribe_router
from dispatcher.web.api.content import router as templates_router
from dispatcher.web.api.deliveries import reports as delivery_reports_router
from dispatcher.web.api.deliveries import router as deliveries_router
from dispatcher.web.api.imports import router as import_router
from dispatcher.web.api.inbox import router as inbox_router
from dispatcher.web.api.metrics import router as metrics_router
from dispatcher.web.api.people import router as people_router
from dispatcher.web.api.recipients import router as recipients_router
from dispatcher.web.api.scheduling import router as schedules_router
from dispatcher.web.api.units import router as units_router
from dispatcher.web.dashboard.router import router as dashboard_router
from dispatcher.web.http.openapi import document_errors

log = structlog.get_logger(__name__)

DOCS_ASSETS = "/docs-assets"


def _load_builtins() -> None:
    try:
        with get_database().transaction() as session:
            loaded = content.load_builtin_templates(session=session)
        if loaded:
            log.info("builtin_templates_loaded", keys=loaded)
    except (OperationalError, ProgrammingError) as exc:
        log.error("database_not_migrated", hint="run: dispatcher migrate", error=str(exc)[:200])


def create_app(settings: Settings | None = None, *, configure_jobs: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if configure_jobs:
            try:
                backends.current()
            except RuntimeError:
                backends.configure(settings)
        _load_builtins()
        content_checks.start_in_background()
        yield

    # /docs and /redoc load Swagger UI and ReDoc from the API itself (DOCS_ASSETS), not a CDN.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        title="BHXH message dispatcher",
        version="0.1.0",
        description="Campaigns, templates and deliveries over VssID, email and social channels.",
        lifespan=lifespan,
    )
    # Every JSON body, whichever route reads it, is refused before decoding when it nests
    # deeper than the limit: the decoder recurses per level.
    app.add_middleware(JsonDepthGuard, limit=settings.json_max_depth)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if isinstance(exc, Invalid):
            detail: Any = [{"loc": exc.loc or ["body"], "msg": exc.message, "type": "value_error"}]
        else:
            detail = exc.message
        return JSONResponse({"detail": detail}, status_code=exc.status_code)

    @app.exception_handler(TemplateProblem)
    async def _template_problem(request: Request, exc: TemplateProblem) -> JSONResponse:
        # A stored template that cannot render for this campaign's variables (a preview at
        # creation, or one over the template budget): the request changes nothing.
        detail = [{"loc": ["template", exc.part or "body"], "msg": str(exc), "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(IntegrityError)
    async def _integrity_error(request: Request, exc: IntegrityError) -> JSONResponse:
        log.warning("write_conflict", error=str(exc.orig)[:200])
        return JSONResponse(
            {"detail": "a concurrent change conflicted with this one; try again"}, status_code=409
        )

    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette names only the methods of the first route matching the path; a path
            # served by several routes (GET and POST /v1/campaigns) allows all of theirs.
            allowed = _allowed_methods(app, request)
            if allowed:
                exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))}
        elif exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # A body FastAPI could not decode (not UTF-8): a 422 naming the body, like
            # any other malformed JSON.
            return JSONResponse(
                {
                    "detail": [
                        {
                            "type": "json_invalid",
                            "loc": ["body"],
                            "msg": f"the body is not valid JSON: {exc.__cause__}"[:300],
                        }
                    ]
                },
                status_code=422,
            )
        return await http_exception_handler(request, exc)

    @app.get(
        "/readyz",
        tags=["health"],
        summary="The database and Redis are reachable",
        responses={503: {"description": "One of them is not (see checks)."}},
    )
    def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        ok = True
        try:
            with get_database().engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            ok = False
            checks["database"] = f"unreachable: {type(exc).__name__}"
        try:
            queue = backends.current()
        except RuntimeError:
            queue = None
        if queue is not None and queue.in_process:
            checks["redis"] = "not used (in-process broker)"
        elif backends.redis_reachable(settings):
            checks["redis"] = "ok"
        else:
            ok = False
            checks["redis"] = "unreachable"
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    for router in (
        import_router,
        recipients_router,
        audiences_router,
        templates_router,
        campaigns_router,
        messages_router,
        deliveries_router,
        delivery_reports_router,
        inbox_router,
        schedules_router,
        unsubscribe_router,
        keys_router,
        units_router,
        people_router,
        accounts_router,
        dashboard_router,
        metrics_router,
    ):
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(FastAPI.openapi(app), app.routes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _allowed_methods(app: FastAPI, request: Request) -> set[str]:
    """The methods of the path's routes. As in OpenAPI, a path with fewer parameters wins:
    /v1/audiences/preview is not also /v1/audiences/{name}."""
    by_parameters: dict[int, set[str]] = {}
    for route in iter_route_contexts(app.routes):
        regex = getattr(route, "path_regex", None)
        found = regex.match(request.scope["path"]) if regex is not None else None
        if route.methods and found is not None:
            by_parameters.setdefault(len(found.groupdict()), set()).update(route.methods)
    return by_parameters[min(by_parameters)] if by_parameters else set()
