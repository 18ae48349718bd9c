from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from dispatcher.campaigns import approval
from dispatcher.content import service
from dispatcher.content.schemas import PreviewIn, PreviewOut, TemplateIn, TemplateOut
from dispatcher.tables.content import Template
from dispatcher.web.http.callers import Editor, Staff
from dispatcher.web.http.deps import DbSession, QueryId

router = APIRouter(prefix="/v1/templates", tags=["templates"])


@router.post("", status_code=201, response_model=TemplateOut, summary="Publish a new version")
def publish_template(data: TemplateIn, session: DbSession, caller: Editor) -> TemplateOut:
    version, _ = approval.publish_template(session=session, data=data, caller=caller)
    template = version.template
    return service.to_out(
        template, version, service.version_count(session=session, template=template)
    )


@router.get("", response_model=list[TemplateOut], summary="Every template at its latest version")
def list_templates(session: DbSession, caller: Staff) -> list[TemplateOut]:
    out = []
    for template in session.scalars(select(Template).order_by(Template.key)):
        version = service.get_version(session=session, template=template)
        out.append(
            service.to_out(
                template, version, service.version_count(session=session, template=template)
            )
        )
    return out


@router.get("/{key}", response_model=TemplateOut)
def get_template(
    key: str, session: DbSession, caller: Staff, version: QueryId = None
) -> TemplateOut:
    template = service.get_template(session=session, key=key)
    found = service.get_version(session=session, template=template, version=version)
    return service.to_out(
        template, found, service.version_count(session=session, template=template)
    )


@router.post(
    "/{key}/preview",
    response_model=PreviewOut,
    summary="Render one variant for a recipient or a context (422 names a template error's line)",
)
def preview_template(key: str, data: PreviewIn, session: DbSession, caller: Staff) -> PreviewOut:
    version, rendered, problems = service.preview(session=session, key=key, request=data)
    return PreviewOut(
        key=key,
        version=version.version,
        channel=data.channel,
        locale=rendered.locale,
        subject=rendered.subject,
        body=rendered.body,
        html=rendered.html,
        problems=problems,
    )
