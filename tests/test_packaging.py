"""Every library sub-package is listed in pyproject.toml (a wheel would silently miss it)."""

from __future__ import annotations

import tomllib

from conftest import ROOT


def test_all_packages_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "lipverify").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
