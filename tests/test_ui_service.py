"""The web UI as `tunnelacct serve` serves it (a process, a real socket): under `[api]
root_path` as behind a proxy, and a login cookie that is `Secure` when a trusted proxy says the
external scheme is https, and only then."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers.prometheus import free_port
from tests.helpers.serving import Serve, write_config

DATA = Path(__file__).parent / "data"
PASSWORD = "correct horse battery staple"


def signed_in_cookie(base: str, headers: dict[str, str]) -> str:
    """The Set-Cookie of a sign-in as admin, sent with `headers`."""
    with httpx.Client(base_url=base, timeout=30) as ui:
        form = ui.get("/login")
        assert form.status_code == 200, form.text
        assert 'action="/ta/login"' in form.text
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        # the browser sends the form's cookie (Path=/ta) to /ta/login, which the proxy
        # forwards as /login: sent by hand here, where no proxy rewrites the path
        csrf_cookie = form.cookies["tunnelacct_login_csrf"]
        signed = ui.post(
            "/login",
            data={"csrf": token.group(1), "user": "admin", "password": PASSWORD},
            headers={**headers, "Cookie": f"tunnelacct_login_csrf={csrf_cookie}"},
        )
        assert signed.status_code == 303, signed.text
        assert signed.headers["location"] == "/ta/"
        return signed.headers["set-cookie"]


@pytest.mark.parametrize(
    ("trusted", "secure"), [(["127.0.0.1"], True), (["192.0.2.1"], False)], ids=["trusted", "not"]
)
def test_serve_marks_the_cookie_secure_only_from_a_trusted_proxy(
    tmp_path: Path, trusted: list[str], secure: bool
) -> None:
    port = free_port()
    api = {"listen": f"127.0.0.1:{port}", "root_path": "/ta", "trusted_proxies": trusted}
    config = write_config(
        DATA / "wg-small.toml",
        tmp_path / "serve.toml",
        {"api": api},
        captures=[{"pcap": str(DATA / "wg-small.pcap"), "speed": 0.05, "loop": True}],
    )
    db = tmp_path / "store.db"
    with Serve(None, config, db, tmp_path, "ui") as serve:
        serve.start()
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "tunnelacct",
                "user",
                "create",
                "admin",
                "--role",
                "admin",
                "--password-stdin",
            ],
            input=PASSWORD + "\n",
            text=True,
            capture_output=True,
            env={**os.environ, "TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"},
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        # what a proxy serving the UI under /ta forwards: the path without the prefix
        # (nginx `location /ta/ { proxy_pass http://127.0.0.1:PORT/; }`), its pages' links
        # and cookie with it
        cookie = signed_in_cookie(f"http://127.0.0.1:{port}", {"X-Forwarded-Proto": "https"})
        assert "Path=/ta" in cookie and "HttpOnly" in cookie
        assert ("Secure" in cookie) is secure
        assert serve.stop() == 0, serve.log()
