"""The on-disk cache for expensive stages (SFT, reward model, CPU peak FLOPs).

Root: `$RLBENCH_CACHE`, default `~/.cache/rlbench`. Entries are keyed by a hash of everything
that determines them and written to a temporary directory first, then renamed, so an
interrupted stage never leaves a half-written entry behind.

An entry is finished when its `DONE` file lists every file of the entry with its size. A hit is
checked against that list (cheap: sizes, not contents), so an entry truncated or emptied later
(a full disk, a copy cut short) is rebuilt rather than trusted; an entry without a list (written
by an older rlbench) is rebuilt once. Installing an entry happens under a lock file beside it:
when two processes build the same entry, the second to finish keeps the first one's finished
entry (which the first may already be reading) and drops its own copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DONE = "DONE"


def cache_root() -> Path:
    return Path(os.environ.get("RLBENCH_CACHE", Path.home() / ".cache" / "rlbench")).expanduser()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def cached_dir(kind: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return (path, hit). On a miss, `build(tmp_dir)` fills a temporary directory that is then
    renamed into place. An existing entry that fails its check is moved aside and rebuilt."""
    final = cache_root() / kind / key
    if is_complete(final):
        return final, True
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        build(tmp)
        write_manifest(tmp)
        with _locked(final.parent / f".{key}.lock"):
            if is_complete(final):  # another process finished first: keep its entry, drop ours
                return final, False
            if final.exists() or final.is_symlink():  # unfinished or corrupt: out of the way first
                trash = Path(tempfile.mkdtemp(prefix=f".{key}-stale-", dir=final.parent))
                os.replace(final, trash / "entry")
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, False


def write_manifest(entry: Path) -> None:
    """Mark `entry` finished: DONE lists every file below it with its size in bytes."""
    files = {str(p.relative_to(entry)): p.stat().st_size for p in sorted(entry.rglob("*")) if p.is_file()}
    (entry / DONE).write_text(json.dumps({"files": files}, indent=1) + "\n")


def is_complete(entry: Path) -> bool:
    """Whether `entry` is a finished cache entry whose files are all there with their recorded sizes."""
    try:
        listed = json.loads((entry / DONE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no DONE, an unreadable one, or an older one without sizes
    if not isinstance(listed, dict):
        return False
    for name, size in listed.items():
        try:
            if (entry / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if absent) for the block."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the rename alone decides
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
