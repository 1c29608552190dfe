"""Who looks at a page of the web UI, as dependencies of its routes, and the checks of a POST.

- `mark_ui` tags every UI request, so that an error raised on the way (a 404 of another org, a
  login needed) is answered as a page, not as the API's JSON (web/ui/errors.py).
- `SignedIn` is the viewer of a valid login cookie; without one a page redirects to /login.
- `ViewerOrg` is an org the viewer may read: the API's own scoping, 404 otherwise.
- `AdminViewer` is an admin; an auditor gets 403.
- `posted_form` reads a POST's form and checks its CSRF token in constant time (403 without).
"""

# No `from __future__ import annotations`: FastAPI reads the dependencies' signatures at runtime.
import hmac
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends, HTTPException, Request

from tunnelacct.web.accesslog import OK, Access, AccessTarget, AccessVia, record_access
from tunnelacct.web.context import context_of, org_visible
from tunnelacct.web.ui.headers import app_path
from tunnelacct.web.ui.logins import LOGIN_COOKIE, Viewer, find_login

CSRF_FIELD = "csrf"
MAX_FIELD_CHARS = 4096  # a filter, a name, a password: none is longer
MAX_FIELDS = 32  # the UI's largest form has 6


class LoginNeeded(Exception):
    """A page needs a signed-in viewer: answered by a redirect to the login page."""

    def __init__(self, back_to: str) -> None:
        self.back_to = back_to
        super().__init__(back_to)


async def mark_ui(request: Request) -> None:
    """Tag the request as the UI's (see the module docstring)."""
    request.state.ui = True


def is_ui_request(request: Request) -> bool:
    """True for a request one of the UI's routes took."""
    return bool(getattr(request.state, "ui", False))


async def current_viewer(request: Request) -> Viewer | None:
    """The viewer of the request's login cookie, or None."""
    ctx = context_of(request)
    cookie = request.cookies.get(LOGIN_COOKIE)
    if cookie is None:
        return None
    return await find_login(ctx.engine, cookie, ctx.clock(), ctx.login_expiry)


MaybeViewer = Annotated[Viewer | None, Depends(current_viewer)]


async def signed_in(request: Request, viewer: MaybeViewer) -> Viewer:
    """The viewer; LoginNeeded (a redirect to /login, and back here after) without one."""
    if viewer is None:
        back_to = app_path(request.scope)
        if request.url.query:
            back_to += f"?{request.url.query}"
        raise LoginNeeded(back_to if request.method == "GET" else "/")
    return viewer


SignedIn = Annotated[Viewer, Depends(signed_in)]


async def viewer_org(request: Request, org: str, viewer: SignedIn) -> str:
    """`org` when the viewer may read it and it exists; 404 either way otherwise."""
    if await org_visible(context_of(request).engine, viewer.principal, org):
        return org
    raise HTTPException(404, f"no org {org!r}")


ViewerOrg = Annotated[str, Depends(viewer_org)]


async def admin_viewer(viewer: SignedIn) -> Viewer:
    """The viewer when an admin; 403 for an auditor."""
    if not viewer.is_admin:
        raise HTTPException(403, "this page is for admins")
    return viewer


AdminViewer = Annotated[Viewer, Depends(admin_viewer)]


async def form_fields(request: Request) -> dict[str, str]:
    """A POST's urlencoded form: the first value of each field, each cut at MAX_FIELD_CHARS
    (the app's guards cap the body at 64 KiB before it is read)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        fields = parse_qs(body, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError:  # more fields than any form of the UI has
        raise HTTPException(400, f"a form of more than {MAX_FIELDS} fields") from None
    return {name: values[0][:MAX_FIELD_CHARS] for name, values in fields.items()}


def same_token(sent: str | None, expected: str) -> bool:
    """Whether a CSRF token came back unchanged (compared in constant time)."""
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


async def posted_form(request: Request, viewer: SignedIn) -> dict[str, str]:
    """The form of a signed-in viewer's POST, its CSRF token checked; 403 when it is missing or
    not the login's."""
    fields = await form_fields(request)
    if not same_token(fields.get(CSRF_FIELD), viewer.csrf_token):
        raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page")
    return fields


PostedForm = Annotated[dict[str, str], Depends(posted_form)]


async def log_access(
    request: Request,
    viewer: Viewer,
    org_id: str,
    what: AccessTarget,
    filter_text: str,
    *,
    rows: int | None,
    status: int = OK,
) -> None:
    """Write a UI read to the access log, as the API writes its own (actor `user:<name>`)."""
    ctx = context_of(request)
    access = Access(
        at=ctx.clock(),
        org_id=org_id,
        actor=f"user:{viewer.name}",
        role=viewer.role.value,
        via=AccessVia.UI,
        what=what,
        filter_text=filter_text,
        rows=rows,
        status=status,
    )
    await record_access(ctx.engine, access)
