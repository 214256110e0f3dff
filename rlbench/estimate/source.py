"""Which model to estimate: its transformers config, read without loading any weight.

`model.name` may be:

- `embedded`: the built-in model's config (built locally, a second);
- `shape:<name>` or `shape:<path to config.json>`: a shape model's config, through
  `rlbench.models.shape` where this version of rlbench has it;
- a path to a `config.json` file, or to a directory holding one (a local checkout);
- a hub name, read from the Hugging Face cache only (nothing is downloaded).

A tokenizer, where one is at hand without a download (the embedded one, which shape models share,
or a local directory's), measures the task's longest prompt; otherwise prompts are taken at
`model.max_prompt_tokens`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlbench.errors import UserError

SHAPE_PREFIX = "shape:"
PROMPT_SAMPLE = 2000  # training problems whose prompts are measured
# Special ids of rlbench's synthetic tokenizer (pad, bos, eos), which shape models use.
SYNTHETIC_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


@dataclass
class ModelSource:
    name: str
    config: Any  # transformers.PretrainedConfig
    tokenizer: Any | None  # one that encodes the task as a run would, when available
    architecture: str
    parameters: int  # of the causal LM (the policy's weights)


def config_from_dict(data: dict[str, Any]) -> Any:
    """A transformers config from a config.json's fields (architecture fields only: no code is run)."""
    from transformers import AutoConfig

    if "model_type" not in data or "vocab_size" not in data:
        raise UserError("model.name: the config has no model_type or vocab_size; give a model's config.json")
    fields = {k: v for k, v in data.items() if not k.startswith("_")
              and k not in ("model_type", "torch_dtype", "dtype", "auto_map", "transformers_version")}
    try:
        return AutoConfig.for_model(data["model_type"], **fields)
    except (ValueError, KeyError) as exc:
        raise UserError(f"model.name: model_type '{data['model_type']}' is not one transformers knows ({exc})") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"model.name: cannot read {path} as JSON ({exc})") from None


def _shape(name: str) -> tuple[Any, Any]:
    try:
        from rlbench.models.shape import shape_config, transformers_config
    except ImportError:
        raise UserError(f"model.name: '{name}': this version of rlbench has no shape models; give the path to a "
                        "config.json instead") from None
    from rlbench.models.tokenizer import build_tokenizer
    from rlbench.tasks.synthetic import vocabulary

    # The embedded tokenizer encodes the task as the shape's synthetic tokenizer does (the same ids,
    # padded to the vocabulary with tokens no text produces), so it measures the prompts.
    return transformers_config(shape_config(name), SYNTHETIC_IDS), build_tokenizer(vocabulary())


def _local_tokenizer(directory: Path, trust_remote_code: bool) -> Any | None:
    if not any((directory / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - a tokenizer that does not load only costs the prompt measurement
        return None


def resolve_model(name: str, trust_remote_code: bool = False) -> ModelSource:
    """The config (and a tokenizer where one is local) of `model.name`; UserError when unreadable."""
    if name == "embedded":
        from rlbench.models.embedded import build_embedded

        model, tokenizer = build_embedded(0)
        config = model.config
    elif name.startswith(SHAPE_PREFIX):
        config, tokenizer = _shape(name)
    else:
        from rlbench.models.loading import check_model_dir

        path = Path(name).expanduser()
        if path.is_file():
            data = _read_json(path)
            if data.get("auto_map") and not trust_remote_code:
                raise UserError(f"model.name: {path} ships its own Python code (auto_map); rlbench runs it only "
                                "when the suite sets model.trust_remote_code: true")
            config, tokenizer = config_from_dict(data), _local_tokenizer(path.parent, trust_remote_code)
        elif path.is_dir():
            check_model_dir(path, "model.name", trust_remote_code, weights=False)  # no code of its own runs
            config = config_from_dict(_read_json(path / "config.json"))
            tokenizer = _local_tokenizer(path, trust_remote_code)
        elif name.endswith(".json") or name.startswith((".", "/", "~")):
            raise UserError(f"model.name: no such file or directory: {name}")
        else:
            config, tokenizer = _cached_hub_config(name, trust_remote_code), None
    architecture, parameters = _count(config)
    return ModelSource(name, config, tokenizer, architecture, parameters)


def _cached_hub_config(name: str, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name: cannot read the config of '{name}' ({str(exc).splitlines()[0]}); give a local "
                        "config.json or directory, a shape:<name>, or a model in the Hugging Face cache") from None


def _count(config: Any) -> tuple[str, int]:
    """(architecture, parameters) of the causal LM built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return type(model).__name__, sum(p.numel() for p in model.parameters())


def context_length(config: Any) -> int | None:
    """The longest sequence the model's positions cover (max_position_embeddings), None where it names none."""
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def longest_prompt(suite: Any, tokenizer: Any | None) -> tuple[int, str]:
    """(prompt tokens, how they were found): the task's longest prompt under `tokenizer` (a sample of
    the training split), capped at model.max_prompt_tokens; the cap itself without a tokenizer."""
    cap = suite.model.max_prompt_tokens
    if tokenizer is None:
        return cap, f"model.max_prompt_tokens ({cap}): no local tokenizer to measure the task's prompts"
    from rlbench.catalog import load_problems
    from rlbench.tasks import encode_prompts

    try:
        problems = load_problems(suite.task, "train", min(suite.task.train_size, PROMPT_SAMPLE), suite.seeds[0])
    except Exception as exc:  # noqa: BLE001 - a task that cannot be read here (no hub) only costs the measurement
        return cap, f"model.max_prompt_tokens ({cap}): the task's prompts could not be read ({exc})"
    longest = max(len(ids) for ids in encode_prompts(tokenizer, problems))
    return min(longest, cap), f"the longest of {len(problems)} training prompts ({longest} tokens, cap {cap})"
