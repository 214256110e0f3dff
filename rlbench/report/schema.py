"""The report's JSON Schema (`schema.json`), checked on every write and every read.

schema.json is also the reference for what a report holds: every key carries a `description`.
`schema_version` changes only when a reader of an older report would misread it; adding a key
does not change it (unknown keys are allowed), renaming or re-meaning one does.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from rlbench.errors import UserError

SCHEMA_PATH = Path(__file__).with_name("schema.json")


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def schema_errors(report: Any) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
            for e in sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))]


def validate_report(report: Any) -> None:
    """Raise AssertionError for a report rlbench itself produced wrongly (an internal bug)."""
    errors = schema_errors(report)
    assert not errors, "report does not match schema.json:\n" + "\n".join(errors[:10])


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and check a report; a missing, unreadable or non-matching file is a UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such report")
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a JSON report ({exc})") from None
    if isinstance(report, dict) and report.get("schema_version") != schema()["properties"]["schema_version"]["const"]:
        raise UserError(f"{path}: schema_version {report.get('schema_version')!r} is not the supported "
                        f"{schema()['properties']['schema_version']['const']}")
    errors = schema_errors(report)
    if errors:
        raise UserError(*[f"{path}: {e}" for e in errors[:20]])
    return report
