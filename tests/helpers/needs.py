"""What a test needs from the machine (root, the WireGuard lab, tools, PostgreSQL), and the one
rule when that is missing: the test skips, loudly, with the reason; with CI set it fails
instead, so that CI never passes without the tests it could not run (issue 15, item 20).

The fixtures of tests/conftest.py apply it (`require_root`, `require_lab`, `require_tshark`,
`require_tcpdump`), as tests/helpers/pg.py does for PostgreSQL:

    needs_lab = pytest.mark.usefixtures("require_lab")
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import NoReturn, overload

import pytest

INSTALL_HINT = "run scripts/install-system-deps.sh"


def ci_set(environ: Mapping[str, str] = os.environ) -> bool:
    """True when $CI is set to anything but "", "0" or "false" (in any case)."""
    return environ.get("CI", "").lower() not in ("", "0", "false")


@overload
def require(
    why_not: None, tests: str, *, hint: str = "", environ: Mapping[str, str] = ...
) -> None: ...


@overload
def require(
    why_not: str, tests: str, *, hint: str = "", environ: Mapping[str, str] = ...
) -> NoReturn: ...


@overload
def require(
    why_not: str | None, tests: str, *, hint: str = "", environ: Mapping[str, str] = ...
) -> None: ...


def require(
    why_not: str | None, tests: str, *, hint: str = "", environ: Mapping[str, str] = os.environ
) -> None:
    """Return when `why_not` is None. Else skip the calling test (or fixture) with
    "<TESTS> NOT RUN: <why_not> (<hint>)", or, with CI set in `environ`, fail with the reason.

    require("missing tshark", "tshark oracle tests")  # skips, or under CI fails
    """
    if why_not is None:
        return
    if ci_set(environ):
        pytest.fail(f"{tests} cannot run: {why_not} (CI is set: they must run)", pytrace=False)
    pytest.skip(f"{tests.upper()} NOT RUN: {why_not}" + (f" ({hint})" if hint else ""))


def missing_tools(*tools: str, path: str | None = None) -> str | None:
    """Why the tools cannot be used: those not found on $PATH (or `path`); None when all are."""
    missing = [tool for tool in tools if shutil.which(tool, path=path) is None]
    return f"missing {', '.join(missing)}" if missing else None


def not_root(euid: int | None = None) -> str | None:
    """Why a test that needs root cannot run as `euid` (default: this process's); None as root."""
    euid = os.geteuid() if euid is None else euid
    return None if euid == 0 else f"needs root (euid={euid})"
