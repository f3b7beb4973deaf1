"""Writing files so that a crash never leaves half of one."""
from __future__ import annotations

import json
import os


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)
