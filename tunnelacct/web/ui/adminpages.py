"""The admins' pages for API tokens and the access log.

    GET  /tokens                 every token: role, org, created, expiry, last use, state
    POST /tokens                 create one (role, org, name, expires): its text shown once
    POST /tokens/{id}/revoke     revoke one
    GET  /access-log?org=&before=   who read which org's sessions or usage, newest first

The token functions are the CLI's (`token create|list|revoke`, web/auth.py); a new token's text
is shown on the answer to its POST only, never in a URL, and the page is not cached.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from tunnelacct.web.accesslog import recent_access
from tunnelacct.web.auth import (
    NEVER,
    Role,
    TokenError,
    create_token,
    list_tokens,
    revoke_token,
    token_expiry,
    token_state,
)
from tunnelacct.web.context import ApiContext
from tunnelacct.web.ui.render import Pages, link
from tunnelacct.web.ui.viewers import AdminViewer, PostedForm

ACCESS_PAGE_ROWS = 100


def admin_page_routes(ctx: ApiContext, pages: Pages) -> APIRouter:
    """The tokens and access-log pages (see the module docstring)."""
    router = APIRouter()

    async def tokens_page(
        request: Request,
        viewer: AdminViewer,
        *,
        created: str = "",
        error: str = "",
        form: dict[str, str] | None = None,
    ) -> Response:
        now = ctx.clock()
        tokens = await list_tokens(ctx.engine)
        rows = [(token, token_state(token, now).value) for token in reversed(tokens)]
        return pages.render(
            request,
            "tokens.html",
            viewer=viewer,
            org=None,
            rows=rows,
            created=created,
            error=error,
            form=form or {"role": "auditor", "org": "", "name": "", "expires": "90d"},
            never=NEVER,
            revoked=request.query_params.get("revoked", ""),
        )

    @router.get("/tokens")
    async def tokens(request: Request, viewer: AdminViewer) -> Response:
        return await tokens_page(request, viewer)

    @router.post("/tokens")
    async def new_token(request: Request, viewer: AdminViewer, form: PostedForm) -> Response:
        role_text = form.get("role", "")
        org = form.get("org", "").strip() or None
        try:
            if role_text not in (Role.AUDITOR.value, Role.ADMIN.value):
                raise TokenError(f"role {role_text!r}: expected auditor or admin")
            role = Role(role_text)
            expires_at = token_expiry(form.get("expires", NEVER) or NEVER, ctx.clock())
            text, _row = await create_token(
                ctx.engine,
                role,
                org_id=org if role is Role.AUDITOR else None,
                name=form.get("name", "").strip() or None,
                expires_at=expires_at,
            )
        except TokenError as e:
            return await tokens_page(request, viewer, error=str(e), form=form)
        return await tokens_page(request, viewer, created=text)

    @router.post("/tokens/{token_id}/revoke")
    async def revoke(
        request: Request, viewer: AdminViewer, token_id: str, _form: PostedForm
    ) -> Response:
        try:
            await revoke_token(ctx.engine, token_id)
        except TokenError as e:
            return await tokens_page(request, viewer, error=str(e))
        return RedirectResponse(link(request, "/tokens", {"revoked": token_id}), 303)

    @router.get("/access-log")
    async def access_log(request: Request, viewer: AdminViewer) -> Response:
        org = request.query_params.get("org", "").strip()
        before = request.query_params.get("before", "")
        before_id = int(before) if before.isdigit() else None
        rows = await recent_access(
            ctx.engine, org_id=org or None, limit=ACCESS_PAGE_ROWS + 1, before_id=before_id
        )
        older = rows[ACCESS_PAGE_ROWS - 1].id if len(rows) > ACCESS_PAGE_ROWS else None
        return pages.render(
            request,
            "access.html",
            viewer=viewer,
            org=None,
            org_filter=org,
            rows=rows[:ACCESS_PAGE_ROWS],
            older=older,
        )

    return router
