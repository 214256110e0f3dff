"""Atomic JSON writing (a temporary file in the same directory, then rename), and the files a
command writes where its `--output` says."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from rlbench.errors import UserError


def write_json_atomic(path: str | Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=_default)
            fh.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is for everyone who can read the directory
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def write_output(path: str | Path, text: str, option: str = "--output") -> Path:
    """Write `text` to the file a command's `option` names; a file that cannot be written (no such
    folder, a folder, no permission) is a UserError naming the option, not a traceback."""
    path = Path(path)
    try:
        path.write_text(text)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write it ({exc.strerror or exc})") from None
    return path


def json_document(data: Any) -> str:
    """`data` as strict JSON for `--format json` (indented, a newline at the end): NaN and
    infinities, which JSON has no literal for, are written as null."""
    return json.dumps(_finite(data), indent=2, default=_default) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
