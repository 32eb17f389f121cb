"""What the benchmark scripts share: writing their JSON result.

The scripts run as `python benchmarks/NAME.py`, so this folder is on `sys.path` and they
import this module as `_report`.
"""

import json
import os
from typing import Any


def write_json(path: str, result: Any) -> None:
    """Writes `result` to `path` as indented JSON, creating its folder; prints where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
