"""Signing in and out, and where `/` leads.

GET  /login        the sign-in form (plain HTML, works without JS; a CSRF field)
POST /login        user + password -> a new login cookie, then back where the viewer was
POST /logout       ends the login (a GET never changes state)
GET  /             /login when signed out; the org picker (admin) or the org's sessions
GET  /orgs         the org picker: an admin's orgs; an auditor goes to their own
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
import secrets
import time

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tunnelacct.store.models import Org, table_of
from tunnelacct.web.context import ApiContext
from tunnelacct.web.ui.logins import LOGIN_COOKIE, end_login, start_login
from tunnelacct.web.ui.render import Pages, link, root_of
from tunnelacct.web.ui.throttle import LoginThrottle
from tunnelacct.web.ui.viewers import (
    CSRF_FIELD,
    MaybeViewer,
    PostedForm,
    SignedIn,
    form_fields,
    same_token,
)
from tunnelacct.web.users import check_password

LOGIN_CSRF_COOKIE = "tunnelacct_login_csrf"  # the sign-in form's CSRF token, before any login
WRONG = "Wrong user name or password."


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path inside the app, never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def cookie_path(request: Request) -> str:
    """The cookies' path: the app's root path, so a sibling app on the host never sees them."""
    return root_of(request) or "/"


def account_routes(ctx: ApiContext, pages: Pages) -> APIRouter:
    """Sign-in, sign-out, the landing redirect and the org picker."""
    router = APIRouter()
    throttle = LoginThrottle()

    def login_form(
        request: Request,
        *,
        back_to: str,
        error: str = "",
        user: str = "",
        status: int = 200,
        retry_after_s: int | None = None,
    ) -> Response:
        """The sign-in form, with a fresh CSRF token in its field and in a cookie."""
        token = secrets.token_urlsafe(32)
        retry = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
        response = pages.render(
            request,
            "login.html",
            status=status,
            headers=retry,
            csrf=token,
            error=error,
            user=user,
            next=back_to,
        )
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=cookie_path(request),
        )
        return response

    @router.get("/login")
    async def login_page(request: Request) -> Response:
        # shown signed in too: signing in as someone else ends the current login
        return login_form(request, back_to=safe_next(request.query_params.get("next")))

    @router.post("/login")
    async def login(request: Request, previous: MaybeViewer) -> Response:
        fields = await form_fields(request)
        if not same_token(fields.get(CSRF_FIELD), request.cookies.get(LOGIN_CSRF_COOKIE, "")):
            raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page")
        name = fields.get("user", "").strip()
        back_to = safe_next(fields.get("next"))
        client = request.client.host if request.client else "unknown"
        keys = [f"user:{name}", f"addr:{client}"]
        wait_s = throttle.wait_s(keys, time.monotonic())
        if wait_s > 0:
            why = f"Too many failed sign-ins: try again in {wait_s} s."
            return login_form(
                request,
                back_to=back_to,
                error=why,
                user=name,
                status=429,
                retry_after_s=wait_s,
            )
        who = await check_password(ctx.engine, name, fields.get("password", ""))
        if who is None:
            throttle.failed(keys, time.monotonic())
            # the form again with its error, a 200: a 401 is for HTTP authentication
            return login_form(request, back_to=back_to, error=WRONG, user=name)
        throttle.succeeded(f"user:{name}")
        if previous is not None:  # a new sign-in in this browser: the old login ends
            await end_login(ctx.engine, previous.login_id, ctx.clock())
        cookie, _viewer = await start_login(ctx.engine, who, ctx.clock())
        response = RedirectResponse(link(request, back_to), 303)
        response.set_cookie(
            LOGIN_COOKIE,
            cookie,
            max_age=int(ctx.login_expiry.max_age_s),
            httponly=True,
            samesite="lax",  # a dashboard's link from another site opens signed in
            secure=request.url.scheme == "https",
            path=cookie_path(request),
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=cookie_path(request))
        return response

    @router.post("/logout")
    async def logout(request: Request, viewer: SignedIn, _form: PostedForm) -> Response:
        await end_login(ctx.engine, viewer.login_id, ctx.clock())
        response = RedirectResponse(link(request, "/login"), 303)
        response.delete_cookie(LOGIN_COOKIE, path=cookie_path(request))
        return response

    @router.get("/")
    async def landing(request: Request, viewer: MaybeViewer) -> Response:
        if viewer is None:
            return RedirectResponse(link(request, "/login"), 303)
        if viewer.org_id is not None:
            return RedirectResponse(link(request, f"/orgs/{viewer.org_id}/sessions"), 303)
        return RedirectResponse(link(request, "/orgs"), 303)

    @router.get("/orgs")
    async def org_picker(request: Request, viewer: SignedIn) -> Response:
        if viewer.org_id is not None:
            return RedirectResponse(link(request, f"/orgs/{viewer.org_id}/sessions"), 303)
        async with AsyncSession(ctx.engine) as db:
            orgs = (await db.scalars(select(Org).order_by(table_of(Org).c.id))).all()
        return pages.render(request, "orgs.html", viewer=viewer, orgs=orgs, org=None)

    return router
