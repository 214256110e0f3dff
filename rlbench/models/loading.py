"""Loading every model role from a directory: the embedded default, a local directory or a hub name.

`resolve_base(model.name)` gives a directory in Hugging Face format (the embedded model or a
shape model saved in the cache, a local directory, or a hub snapshot). From a directory (the base, or the SFT output):

- parameter dtypes follow the run's resolved `Precision` (rlbench.models.precision), passed to
  every loader: under bf16-mixed the trained roles (policy, value) load in float32 (master
  weights), the frozen ones in bf16.
- policy and reference: `AutoModelForCausalLM` with the suite's `dtype`, `attn_implementation`
  and `trust_remote_code` (off unless the suite sets it), moved to the run's device; the
  policy gets gradient checkpointing when `model.gradient_checkpointing` is set.
- LoRA (`model.lora`, the `peft` extra): adapters on the policy; the reference is then the same
  module with its adapters disabled (`AdapterDisabledReference`), so no second copy of the
  weights exists and the reference role's static bytes are 0.
- reward and value: `ScalarHeadModel` (a backbone and a linear head), from a causal LM directory
  (fresh zero head), a directory saved by `ScalarHeadModel.save`, or a hub reward model saved by
  `AutoModelForSequenceClassification` with one label (its backbone and score layer become the
  scalar head model, so every role scores sequences the same way).

    precision = resolve_precision(suite.model)
    policy, tokenizer = load_policy(path, suite.model, precision, rlbench.device.default_device())
    reference = AdapterDisabledReference(policy) if suite.model.lora else load_causal_lm(path, suite.model, precision, device)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlbench.cache import cached_dir, stable_hash
from rlbench.config import LoraConfig, ModelConfig
from rlbench.errors import UserError
from rlbench.models.embedded import EMBEDDED_NAME, build_embedded, embedded_spec, save_pretrained_pair
from rlbench.models.precision import DTYPES, Precision

PEFT_MISSING = "model.lora: LoRA needs the peft package, rlbench's extra 'peft' (pip install peft)"


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def embedded_base_dir(seed: int = 0) -> Path:
    """The freshly initialised embedded model, saved once in the cache in Hugging Face format."""

    def build(tmp: Path) -> None:
        model, tokenizer = build_embedded(seed)
        save_pretrained_pair(model, tokenizer, tmp)

    key = stable_hash(embedded_spec(seed))
    return cached_dir("base", key, build)[0]


def import_model_code(path: str | Path, cfg: ModelConfig) -> None:
    """Import the library code that loading the model at `path` needs (its transformers modeling
    and tokenizer modules), so that a measured load counts the model's memory, not the library's."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: F401

    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    for auto in (AutoModelForCausalLM, AutoModel):
        try:
            auto._model_mapping[type(config)]  # resolving the class imports its module
        except (KeyError, AttributeError):
            pass


def resolve_base(name: str, trust_remote_code: bool = False) -> Path:
    """A directory holding the base model for `model.name`: checked to hold a config and weights,
    and refused when it ships Python code (`auto_map`) that the suite does not trust."""
    if name == EMBEDDED_NAME:
        return embedded_base_dir()
    from rlbench.models.shape import is_shape, shape_base_dir

    if is_shape(name):
        return shape_base_dir(name)
    path = Path(name).expanduser()
    if not path.is_dir():
        if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise UserError(f"model.name: {name}: not a model directory (and not a hub name such as "
                            "Qwen/Qwen2.5-0.5B-Instruct)")
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(name))
        except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated: all the user's to fix
            raise UserError(f"model.name: cannot get '{name}' from the hub or its cache "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    check_model_dir(path, "model.name", trust_remote_code)
    return path


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_model_dir(path: Path, field: str, trust_remote_code: bool, weights: bool = True) -> None:
    """UserError unless `path` holds config.json (and weights, when `weights`), and, unless the
    suite sets `model.trust_remote_code`, no `auto_map`: transformers would import the Python
    files it names (or ask on the terminal whether to)."""
    import json

    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"{field}: {path} has no config.json; expected a model directory in Hugging Face format")
    if weights and not any((path / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"{field}: {path} holds no weights (none of {', '.join(WEIGHT_FILES)})")
    if trust_remote_code:
        return
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue  # transformers reports an unreadable file itself
        if isinstance(data, dict) and data.get("auto_map"):
            raise UserError(f"{field}: {path} ships its own Python code (auto_map in {name}); rlbench runs "
                            "it only when the suite sets model.trust_remote_code: true")


# ---- causal LMs: policy and reference ---------------------------------------------------------


def pretrained_kwargs(cfg: ModelConfig, precision: Precision, trained: bool = False) -> dict[str, Any]:
    """Keyword arguments of every `from_pretrained` call for the suite's model (the parameter dtype
    follows the precision: float32 masters for trained roles under bf16-mixed)."""
    kwargs: dict[str, Any] = {"dtype": precision.parameter_dtype(trained), "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    return kwargs


def load_tokenizer(path: str | Path, cfg: ModelConfig):
    """The directory's tokenizer (its chat template included), with a pad token (EOS when it has none)."""
    from rlbench.models.tokenizer import load_saved_tokenizer

    tokenizer = load_saved_tokenizer(path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path, cfg: ModelConfig, precision: Precision, device: torch.device | str = "cpu",
                   trainable: bool = False) -> nn.Module:
    """`AutoModelForCausalLM` from a directory on `device`; trainable models get gradient
    checkpointing when the suite asks for it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, **pretrained_kwargs(cfg, precision, trainable)).to(device)
    if trainable and cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    return model


def add_lora(model: nn.Module, lora: LoraConfig) -> nn.Module:
    """Wrap `model` with LoRA adapters (peft); only the adapters are left trainable."""
    try:
        import peft
    except ImportError:
        raise UserError(PEFT_MISSING) from None
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    try:
        return peft.get_peft_model(model, config)
    except ValueError as err:  # e.g. no module matches target_modules
        raise UserError(f"model.lora.target_modules: {err}") from None


def load_policy(path: str | Path, cfg: ModelConfig, precision: Precision, device: torch.device | str = "cpu"):
    """(policy, tokenizer): the trainable causal LM, with LoRA adapters when `cfg.lora` is set."""
    tokenizer = load_tokenizer(path, cfg)
    model = load_causal_lm(path, cfg, precision, device, trainable=True)
    if cfg.lora is not None:
        model = add_lora(model, cfg.lora)
    return model, tokenizer


class AdapterDisabledReference(nn.Module):
    """The reference role of a LoRA policy: the policy's own module run with its adapters disabled.

    It holds no parameters or buffers of its own (the policy is kept outside the module tree), so
    its static bytes are 0: with LoRA the frozen base weights serve both roles. It says so:
    `weights_of` names the role whose weights it computes with (its FLOPs are the policy's shape's).
    """

    weights_of = "policy"

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        assert hasattr(policy, "disable_adapter"), "the policy must be a peft model with adapters"
        self.__dict__["policy"] = policy  # not a submodule: its parameters belong to the policy role
        self.requires_grad_(False)

    @property
    def config(self):
        return self.policy.config

    def get_base_model(self) -> nn.Module:
        """The transformers model its forward runs, as a peft model names it (keyword arguments go to it)."""
        return self.policy.get_base_model()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self.policy.disable_adapter():
                return self.policy(*args, **kwargs)
        finally:
            self.policy.train(was_training)


# ---- scalar-head models: reward and value -----------------------------------------------------


def is_sequence_classifier(path: str | Path, trust_remote_code: bool = False) -> bool:
    """Whether a directory holds an `...ForSequenceClassification` model (a hub reward model)."""
    from transformers import AutoConfig

    from rlbench.models.heads import HEAD_FILE

    if (Path(path) / HEAD_FILE).exists():
        return False
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    architectures = getattr(config, "architectures", None) or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def scalar_model_from_classifier(classifier: nn.Module):
    """A ScalarHeadModel with a one-label sequence classifier's backbone and score layer.

    Hugging Face's classifiers apply their score layer to the last hidden state and read it at the
    last non-padding token, which is what `ScalarHeadModel.score` does.
    """
    from rlbench.models.heads import ScalarHeadModel

    num_labels = classifier.config.num_labels
    if num_labels != 1:
        raise UserError(f"a reward model must score with one label, this classifier has {num_labels}")
    layer = getattr(classifier, "score", None) or getattr(classifier, "classifier", None)
    if not isinstance(layer, nn.Linear):
        raise UserError(f"{type(classifier).__name__}: no linear `score` or `classifier` layer to read a "
                        "reward from")
    backbone = classifier.base_model
    model = ScalarHeadModel(backbone, backbone.config.hidden_size)
    with torch.no_grad():
        model.head.weight.copy_(layer.weight)
        if layer.bias is not None:
            model.head.bias.copy_(layer.bias)
    return model.to(layer.weight.dtype)


def load_scalar_model(path: str | Path, cfg: ModelConfig, precision: Precision, device: torch.device | str = "cpu",
                      trainable: bool = False):
    """A ScalarHeadModel (reward or value role) from a causal LM, scalar-head or classifier directory."""
    from rlbench.models.heads import ScalarHeadModel

    if is_sequence_classifier(path, cfg.trust_remote_code):
        from transformers import AutoModelForSequenceClassification

        model = scalar_model_from_classifier(
            AutoModelForSequenceClassification.from_pretrained(path, **pretrained_kwargs(cfg, precision, trainable)))
    else:
        model = ScalarHeadModel.from_pretrained(path, precision.parameter_dtype(trainable))
    model = model.to(device)
    if trainable and cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(model.backbone)
    return model


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (non-reentrant: frozen inputs need no grad hooks).
    transformers 5 calls it activation checkpointing; earlier versions, gradient checkpointing."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
