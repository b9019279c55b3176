"""Print a hash of everything the lock files are compiled from (`make lock`).

The dependency lists of pyproject.toml (the one place they are written), the build choices in
requirements/constraints.txt and the --no-deps list requirements/nodeps.txt. scripts/lock.sh
stamps it into the locks; scripts/setup.sh refuses to install when a lock's stamp is stale,
so an edited dependency list can never be silently left out of an install.
"""

import hashlib
import json
import sys
import tomllib
from pathlib import Path

root = Path(__file__).resolve().parents[1]
project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
data = {
    "dependencies": project["dependencies"],
    "extras": project["optional-dependencies"],
    "constraints": (root / "requirements/constraints.txt").read_text(encoding="utf-8"),
    "nodeps": (root / "requirements/nodeps.txt").read_text(encoding="utf-8"),
}
sys.stdout.write(hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16] + "\n")
