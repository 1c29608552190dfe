"""The README documents every config key and every decode reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunnelacct.config import SECTION_KEYS
from tunnelacct.decode import REASONS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("section", "key"), [(s, k) for s, keys in SECTION_KEYS.items() for k in keys]
)
def test_every_config_key_is_documented_in_the_readme(section: str, key: str) -> None:
    heading = f"[[{section}]]" if section in ("orgs", "clients", "resources") else f"[{section}]"
    assert heading in README
    part = README[README.index(heading) :]
    assert f"| `{key}` |" in part, f"{heading} {key} is not in the README's reference"


@pytest.mark.parametrize("reason", [r for r in REASONS if r != "ok"])
def test_every_decode_reason_is_documented_in_the_readme(reason: str) -> None:
    assert f"`{reason}`" in README
