"""The on-disk cache for expensive stages (SFT, reward model, CPU peak FLOPs).

Root: `$RLBENCH_CACHE`, default `~/.cache/rlbench`. Entries are keyed by a hash of everything
that determines them (`stage_key` adds the numerics environment for stages whose numbers depend
on it: torch, transformers and the device's kernels) and written to a temporary directory first,
then renamed, so an interrupted stage never leaves a half-written entry behind.

An entry is finished when its `DONE` file lists every file of the entry with its size, its
modification time and its SHA-256, and says where it was built (`built_record`: host, time,
numerics; the report shows it beside a cached stage). A hit is checked against that list: an entry
truncated or emptied later (a full disk, a copy cut short) is rebuilt rather than trusted, and a
file whose time changed is hashed again; one whose contents changed at the same size is a
UserError naming the entry to delete (never a traceback from whatever reads it). An entry without
a list (written by an older rlbench) is rebuilt once. A disk that fills while an entry is written
(an OSError, or safetensors' own error type) is one line naming the cache. Installing an entry
happens under a lock file beside it: when two processes build the same entry, the second to finish
keeps the first one's finished entry (which the first may already be reading) and drops its own copy.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlbench.errors import UserError

DONE = "DONE"
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def cache_root() -> Path:
    return Path(os.environ.get("RLBENCH_CACHE", Path.home() / ".cache" / "rlbench")).expanduser()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def stage_key(payload: dict[str, Any]) -> str:
    """The cache key of a stage whose numbers depend on the numerics environment (SFT, the reward
    model): `payload` (what the stage computes from) with `rlbench.environment.stage_numerics()`."""
    from rlbench.environment import stage_numerics

    return stable_hash({**payload, "numerics": stage_numerics()})


def cached_dir(kind: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return (path, hit). On a miss, `build(tmp_dir)` fills a temporary directory that is then
    renamed into place. An existing entry that fails its check is moved aside and rebuilt."""
    final = cache_root() / kind / key
    if is_complete(final):
        check_contents(final)
        return final, True
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    except OSError as exc:
        raise UserError(f"cache {final.parent}: cannot create the {kind} entry ({exc.strerror or exc}); "
                        "set RLBENCH_CACHE to a directory you can write") from None
    try:
        try:
            build(tmp)
            write_manifest(tmp)
        except Exception as exc:  # noqa: BLE001 - a disk that fills is said once, whatever library wrote
            reason = _write_failure(exc)
            if reason is None:
                raise
            raise UserError(f"cache {final.parent}: cannot write the {kind} entry: {reason}; free space there, or "
                            "set RLBENCH_CACHE to a disk with room") from None
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


def _write_failure(exc: Exception) -> str | None:
    """What went wrong when a write failed for lack of room or a broken disk (None: not that):
    an OSError, safetensors' SafetensorError (no OSError) or torch's stream writer."""
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)) if exc.errno in WRITE_ERRNOS else None
    text = str(exc)
    if type(exc).__name__ == "SafetensorError" or "failed writing file" in text:
        for code in WRITE_ERRNOS:
            if f"os error {code})" in text or f"code: {code}," in text or os.strerror(code) in text:
                return os.strerror(code)
        if type(exc).__name__ == "SafetensorError" and "IoError" in text:
            return text.splitlines()[-1][:200]
    return None


def write_manifest(entry: Path) -> None:
    """Mark `entry` finished: DONE lists every file below it with its size in bytes, its
    modification time and its SHA-256, and where it was built."""
    files, times, digests = {}, {}, {}
    for p in sorted(entry.rglob("*")):
        if p.is_file():
            name, info = str(p.relative_to(entry)), p.stat()
            files[name], times[name], digests[name] = info.st_size, info.st_mtime_ns, _sha256(p)
    from rlbench.environment import cpu_model_name

    built = {"host": platform.node(), "cpu": cpu_model_name(), "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    done = {"files": files, "mtime_ns": times, "sha256": digests, "built": built}
    (entry / DONE).write_text(json.dumps(done, indent=1) + "\n")


def built_record(entry: Path) -> dict[str, Any] | None:
    """Where and when a cache entry was built (host, CPU, time), as its DONE says; None where it does not."""
    try:
        built = json.loads((entry / DONE).read_text()).get("built")
    except (OSError, ValueError, AttributeError):
        return None
    return built if isinstance(built, dict) else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def check_contents(entry: Path) -> None:
    """A finished entry's files whose modification time changed since DONE was written are hashed
    again; one that no longer matches its SHA-256 is a UserError naming the entry to delete."""
    try:
        done = json.loads((entry / DONE).read_text())
        times, digests = done.get("mtime_ns") or {}, done.get("sha256") or {}
    except (OSError, ValueError, AttributeError):
        return  # is_complete has just read it; an older DONE has no hashes to check
    for name, digest in digests.items():
        path = entry / name
        try:
            if path.stat().st_mtime_ns == times.get(name) or _sha256(path) == digest:
                continue
        except OSError:
            pass
        raise UserError(f"cache entry {entry} is corrupted ({name} changed since it was written, at the same "
                        f"size); delete that directory and run again: rm -r {entry}")


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
