"""
Print pip constraints that pin every dependency named in setup.cfg (install_requires and every extra) to its lower
bound: `.ci/run` installs the lowest supported versions with them and runs the whole suite there, so a lower bound is
a version the tests have passed on.
"""

import configparser
import re
import sys
from pathlib import Path

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)")


def lower_bounds(setup_cfg: Path) -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    lines = parser["options"]["install_requires"].splitlines()
    for extra in parser["options.extras_require"].values():
        lines += extra.splitlines()
    bounds: dict[str, str] = {}
    for line in lines:
        match = REQUIREMENT.match(line)
        if match:
            name = match.group(1).lower().replace("_", "-")
            if bounds.setdefault(name, match.group(3)) != match.group(3):
                raise SystemExit(f"setup.cfg gives {name} two lower bounds: {bounds[name]} and {match.group(3)}")
    return bounds


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    for name, version in sorted(lower_bounds(root / "setup.cfg").items()):
        sys.stdout.write(f"{name}=={version}\n")
