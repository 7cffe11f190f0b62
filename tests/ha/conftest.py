"""tests/ha imports the project root, its own helpers and the services test's helpers by module name."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "tests" / "services", ROOT / "tests" / "ha"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
