"""The README documents every config key and every decode reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tunnelacct.capture.reasons import REASONS
from tunnelacct.config.model import ARRAY_SECTIONS, SECTION_KEYS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def reference(heading: str) -> str:
    """The README's "### `heading`" subsection, up to the next heading."""
    start = README.index(f"### `{heading}`")
    end = re.compile(r"^#{1,3} ", re.MULTILINE).search(README, start + 1)
    return README[start : end.start() if end else len(README)]


@pytest.mark.parametrize(
    ("section", "key"), [(s, k) for s, keys in SECTION_KEYS.items() for k in keys]
)
def test_every_config_key_is_documented_in_the_readme(section: str, key: str) -> None:
    heading = f"[[{section}]]" if section in ARRAY_SECTIONS else f"[{section}]"
    assert f"### `{heading}`" in README, f"the README has no {heading} reference"
    assert f"| `{key}` |" in reference(heading), f"{heading} {key} is not in the README's reference"


@pytest.mark.parametrize("reason", [r for r in REASONS if r != "ok"])
def test_every_decode_reason_is_documented_in_the_readme(reason: str) -> None:
    assert f"`{reason}`" in README
