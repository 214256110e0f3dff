"""What `model.name` names, read without torch, for checks a suite gets before anything loads.

    model_positions("embedded")                 # 512: the embedded model's max_position_embeddings
    model_positions("shape:qwen2.5-0.5b")       # 32768, from the shipped config (checked: see below)
    model_positions("/data/models/qwen2.5")     # UserError when that directory does not exist
    model_positions("path/to/config.json")      # a config file, as `rlbench estimate` takes one
    model_positions("Qwen/Qwen2.5-0.5B")        # None: a hub name, whose config is not read here

A name is the embedded model, `shape:<known name or config.json path>`, a local directory, or a
Hugging Face repo id (`owner/name`). A name that cannot be a repo id (an absolute or relative path,
`~`, spaces) must be an existing directory: said in one line, not left to the hub library's
validation error. A shape's config.json is checked field by field (dimensions are positive integers
of a size a machine can hold, the file is UTF-8 JSON holding an object), since the shape is built
from it with random weights. Shapes ship in rlbench/models/shapes/; rlbench.models.shape builds them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rlbench.errors import UserError

SHAPE_PREFIX = "shape:"
SHAPES_DIR = Path(__file__).resolve().parents[1] / "models" / "shapes"
EMBEDDED_POSITIONS = 512  # rlbench.models.embedded.ARCHITECTURE["max_position_embeddings"] (a test keeps them equal)
# A Hugging Face repo id: `name` or `owner/name`, letters, digits, '-', '_', '.', at most 96 characters.
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
REPO_ID_MAX = 96
# Dimensions of a shape's config: positive integers, each at most MAX_DIMENSION, and at most
# MAX_PARAMETERS parameters in all (the largest published configs: vocabularies of 256k, widths of
# 16k, 10M positions, and 1e12 parameters; beyond these nothing could be built on any machine).
DIMENSIONS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "max_position_embeddings")
MAX_DIMENSION = 2**24
MAX_PARAMETERS = 10**13


def is_shape(name: str) -> bool:
    return name.startswith(SHAPE_PREFIX)


def known_shapes() -> list[str]:
    return sorted(p.stem for p in SHAPES_DIR.glob("*.json"))


def shape_config(name: str) -> dict[str, Any]:
    """The checked config dict of `shape:<known name>` or `shape:<path to a config.json>`."""
    spec = name[len(SHAPE_PREFIX):] if is_shape(name) else name
    shipped = SHAPES_DIR / f"{spec}.json"
    path = shipped if shipped.is_file() else Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UserError(f"model.name: '{name}': no shape '{spec}' (known: {', '.join(known_shapes())}) and no "
                        "config.json at that path")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise UserError(f"model.name: '{name}': cannot read {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"model.name: '{name}': {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                        f"offset {exc.start}); give a model's config.json") from None
    except (ValueError, RecursionError) as exc:
        raise UserError(f"model.name: '{name}': cannot read {path} as JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UserError(f"model.name: '{name}': {path} holds no JSON object; give a model's config.json")
    missing = [k for k in ("model_type", "vocab_size") if k not in config]
    if missing:
        raise UserError(f"model.name: '{name}': {path} has no {' or '.join(missing)}; give a model's config.json")
    problem = shape_problem(config)
    if problem:
        raise UserError(f"model.name: '{name}': {path}: {problem}")
    return config


def shape_problem(config: dict[str, Any]) -> str | None:
    """Why a shape cannot be built from `config` (None when it can)."""
    if not isinstance(config.get("model_type"), str):
        return f"model_type must be a string, got {config.get('model_type')!r}"
    for key in DIMENSIONS:
        value = config.get(key)
        if value is None and key != "vocab_size":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_DIMENSION:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
            return f"{key} must be a whole number from 1 to {MAX_DIMENSION:,}, got {shown}"
    width, layers = config.get("hidden_size") or 0, config.get("num_hidden_layers") or 0
    ffn = config.get("intermediate_size") or 4 * width
    parameters = 2 * config["vocab_size"] * width + layers * (4 * width * width + 3 * width * ffn)
    if parameters > MAX_PARAMETERS:
        return f"its dimensions make about {parameters:.1e} parameters, more than {MAX_PARAMETERS:.0e}: no machine holds it"
    return None


def model_positions(name: str) -> int | None:
    """The positions (max_position_embeddings) of the model `name` names, where they can be read
    without loading it; None for a hub name, or a directory whose config does not say. UserError:
    a shape that cannot be built, or a name that is no repo id and no existing directory."""
    if name == "embedded":
        return EMBEDDED_POSITIONS
    if is_shape(name):
        return shape_config(name).get("max_position_embeddings")
    path = Path(name).expanduser()
    if path.is_dir() or path.is_file():  # a model directory, or a config.json (`rlbench estimate` reads one)
        try:
            config = json.loads((path / "config.json" if path.is_dir() else path).read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            return None  # what the directory lacks is said when it is loaded (rlbench.models.loading)
        positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
        return positions if isinstance(positions, int) and not isinstance(positions, bool) else None
    looks_local = name.startswith(("/", ".", "~")) or path.exists()
    if looks_local or len(name) > REPO_ID_MAX or not REPO_ID.fullmatch(name) or ".." in name or "--" in name:
        what = "no such directory"
        raise UserError(f"model.name: {what}: {name} (a local model is a directory with its config.json and "
                        "weights; a hub model is named owner/name)")
    return None
