"""What the runner and its worker processes share: the event line protocol and signal handling.

A worker prints progress as `@rlbench {json}` lines on stdout; the runner reads them. Both turn
SIGTERM into KeyboardInterrupt so that a `kill` ends a run like Ctrl-C, with its results written.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

EVENT_PREFIX = "@rlbench "


def emit(event: dict[str, Any]) -> None:
    """One progress event for the runner, on stdout."""
    print(EVENT_PREFIX + json.dumps(event), flush=True)


def raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler: unwind as KeyboardInterrupt, so the report and results are still written."""
    raise KeyboardInterrupt(f"signal {signum}")


def quiet_libraries() -> None:
    """transformers' own progress bars and advice would break up rlbench's progress display.

    Where transformers is not imported yet this only sets the environment it reads at import (the
    user's own settings win), so a run whose stages are all cached never pays for importing it."""
    if "transformers" not in sys.modules:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
