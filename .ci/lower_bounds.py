"""Print pip constraints that pin every lower bound pyproject.toml declares for the core and test
dependencies (``name>=X`` becomes ``name==X``): CI installs them to check that the oldest
versions eedecode accepts actually work."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
requirements = [*project["dependencies"], *project["optional-dependencies"]["test"]]
for requirement in requirements:
    spec = requirement.split(";")[0].strip()
    found = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", spec)
    if found is None:
        sys.exit(f"{requirement!r}: expected 'name>=version' (a lower bound CI can pin)")
    name, version = found.groups()
    if name == "ruff":  # a linter: CI lints with the newest release only
        continue
    print(f"{name}=={version}")
