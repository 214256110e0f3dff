"""The on-disk cache for expensive stages (SFT, reward model, CPU peak FLOPs).

Root: `$RLBENCH_CACHE`, default `~/.cache/rlbench`. Entries are keyed by a hash of everything
that determines them and written to a temporary directory first, then renamed, so an
interrupted stage never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    return Path(os.environ.get("RLBENCH_CACHE", Path.home() / ".cache" / "rlbench")).expanduser()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def cached_dir(kind: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return (path, hit). On a miss, `build(tmp_dir)` fills a temporary directory that is then
    renamed into place; if two processes race, the first rename wins and the other copy is dropped."""
    final = cache_root() / kind / key
    if (final / "DONE").exists():
        return final, True
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        build(tmp)
        (tmp / "DONE").write_text("ok\n")
        if final.exists():  # a stale, unfinished entry
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "DONE").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, False
