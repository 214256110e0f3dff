"""Live bytes of a run traced on fake tensors: PyTorch's MemTracker, labelled by role and kind.

`PhaseTracker` is a `torch.distributed._tools.mem_tracker.MemTracker` (it keeps the tracker's
storage accounting: every storage counted once, freed when its last tensor dies, optimizer state
found through the optimizer hooks) that also executes every operation itself:

- Work on fake tensors (weights, activations, logits, caches), or on meta tensors (a model being
  given storage), runs under a `FakeTensorMode`: shapes, dtypes and storages are real, no memory
  is allocated and no arithmetic is done. Real tensors among its inputs are replaced by fake twins.
- Work on small real tensors only (ids, attention masks, positions, the indices of the packed
  forward) runs for real, so code that reads such values (`int(mask.sum())`, `nonzero()`) takes
  the branch a real run takes. Bigger inputs are tried fake first: a result of more than
  `REAL_LIMIT` bytes, or a new floating-point tensor made from no tensor (a cache), stays fake.
- Data-dependent decisions on fake values are driven to the worst case: a token drawn from fake
  probabilities (`multinomial`, `argmax`, the inverse CDF's `searchsorted`) is a real tensor of a
  token that is never EOS, so every completion runs to `max_new_tokens`; a fake scalar read in
  Python (a loss logged with `.item()`) reads 1.
- Scratch memory a kernel allocates inside one call, which no operator's output shows, is added at
  that operator (`KERNEL_SCRATCH`: logsumexp's input-sized buffer).
- Gradients accumulated in place: when a tensor receives several gradients in the backward pass (a
  tied embedding and LM head, the LM head applied a chunk at a time), autograd sums them in place
  into the buffer it alone holds, but never for a tensor subclass, so on fake tensors (and under
  MemTracker on real ones) it makes a new tensor for every sum: one gradient more at that instant. An `add` of two like tensors in the backward pass, one of which dies before the next
  operator (the buffer it replaced), is counted as that in-place sum (`_settle_sum`), unless the
  sum so far is a view: autograd does not write into a storage another tensor shares, so a tied
  LM head's gradient (a transposed product) arriving before the embedding's is summed into a new
  tensor, in a run as here (`benchmarks/tied_gradient_sum.py`).

Each storage carries a label `role/kind` (kinds: weights, gradients, optimizer, activations,
logits, kv_cache, and gathered: the full parameters FSDP2 all-gathers for a unit while it computes). New storages are labelled by context: weights while a role loads, optimizer
inside `optimizer.step()`, logits when the last dimension is the vocabulary, activations otherwise,
each under the role of the phase that made them; gradients and KV caches are relabelled when
they are known (`relabel`). MemTracker's per-module snapshots are not used (its module hooks
refuse a root module called twice, as a decode loop does).

Peaks are kept per region: (phase, call, pass, segment). A pass is a run of operations of one kind
(forward, backward, optimizer step); a segment is where in the layer stack the pass is: `before`
the first decoder layer's weights are read, in the `first`, `middle` or `last` layer, `after` a
weight outside the layers is read past them, or `all` layers at once (an optimizer's foreach
kernels). In each region the peak is an affine function of the number of layers, which is what lets
`rlbench.estimate.predict` trace 4 and 5 layers and extrapolate to 28.
"""

from __future__ import annotations

import re
import weakref
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._guards import active_fake_mode
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
)
from torch.distributed._tools.common_utils import get_untyped_storages
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType, _RefType
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from rlbench.estimate.opmemo import empty_like, memo_call

ROLES = ("policy", "reference", "reward", "value", "rollout", "other")
KINDS = ("weights", "gradients", "optimizer", "activations", "logits", "kv_cache", "gathered")
Label = _RefType("Label", {f"{r}/{k}": f"{r}/{k}" for r in ROLES for k in KINDS})
TOTAL = "Total"
REAL_LIMIT = 64 * 2**20  # integer/boolean results above this stay fake
SAMPLING_OPS = (torch.ops.aten.multinomial.default, torch.ops.aten.argmax.default,
                torch.ops.aten.searchsorted.Tensor)  # a token drawn from fake probabilities (inverse CDF too)
# Scratch memory a kernel allocates and frees inside one operator call, which no operator's output
# shows: ATen's logsumexp computes (x - max).exp_() into a tensor the size of its input (CPU and
# CUDA alike). Measured at the 0.5B shape, the reference log-probs' peak is the packed logits, their
# copy divided by the temperature and this buffer: three vocabulary-wide tensors, not two.
KERNEL_SCRATCH = {torch.ops.aten.logsumexp.default: lambda args: args[0].numel() * args[0].element_size()}
LAYER_NAME = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")


def layer_index(name: str) -> int:
    """The decoder layer a dotted parameter or buffer name belongs to, -1 for one outside the layers
    (a module's name: pass it with a trailing dot)."""
    match = LAYER_NAME.search(f".{name}")
    return int(match.group(1)) if match else -1


def _tensors(values: tuple | list) -> list[torch.Tensor]:
    """The tensors in an operator's arguments or results (tensors, and lists of them)."""
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(x for x in v if isinstance(x, torch.Tensor))
    return out


_LABELS = {(r, k): Label(f"{r}/{k}") for r in ROLES for k in KINDS}


def label(role: str, kind: str) -> Any:
    return _LABELS[role, kind]


@dataclass
class Peak:
    """The highest live total seen in one region, and what it was made of (label -> bytes)."""

    total: int = -1
    parts: dict[str, int] = field(default_factory=dict)


class HooklessMemTracker(MemTracker):
    """MemTracker without its module tracker (see the module docstring): storages and optimizer
    state are still tracked, but no per-module hooks run, so a module may be called any number of
    times (a decode loop calls the root module once per token)."""

    def __enter__(self) -> HooklessMemTracker:
        self._fake_mode_on_entry = None
        self._register_global_optimizer_hook()
        self._track_resize()
        TorchDispatchMode.__enter__(self)
        return self

    def __exit__(self, *args: Any) -> None:
        self._deregister_param_and_optimizer_hooks()
        self._restore_resize()
        TorchDispatchMode.__exit__(self, *args)


class PhaseTracker(HooklessMemTracker):
    """MemTracker that runs fake/real as described in the module docstring and keeps region peaks.

    Use it as a context manager around everything traced (model loading included). `phase(name,
    role)` marks a phase; `loading(role)` labels what is created as that role's weights;
    `relabel(tensor, role, kind)` changes a storage's label; `layer_map(role, module)` tells it
    which storages are which decoder layer's weights.
    """

    def __init__(self, device: torch.device | str = "cpu", vocab_size: int = 0, depth: int = 1,
                 worst_token: int = 0) -> None:
        super().__init__()
        self._ref_class = Label
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.device = torch.device(device)
        self.vocab_size, self.depth, self.worst_token = vocab_size, depth, worst_token
        self._layers = WeakIdKeyDictionary()  # weight storage -> layer index (-1: outside the layers)
        self._fakes = WeakIdKeyDictionary()  # real tensor -> its fake twin
        self.phase_name: str | None = None
        self.failed_phase: str | None = None  # the phase an exception left
        self.phase_role = "other"
        self.loading_role: str | None = None
        self.calls: dict[str, int] = defaultdict(int)
        self.starts: dict[tuple[str, int], Peak] = {}  # live bytes when each phase call began, and ended
        self.ends: dict[tuple[str, int], Peak] = {}
        self.peaks: dict[tuple, Peak] = {}
        self._pending_sum: tuple | None = None  # an add that may be autograd's in-place sum (`_settle_sum`)
        self._pass = self._pass_base = 0
        self._pass_kind = "forward"
        self._segment = "before"

    # -- the tracker's own state ----------------------------------------------------------------
    def live(self) -> Peak:
        """What is alive now: total bytes and bytes by label."""
        parts: dict[str, int] = defaultdict(int)
        for snap in self._curr_mem_snap.values():
            for key, value in snap.items():
                if key != TOTAL and value:
                    parts[key.value] += value
        return Peak(sum(parts.values()), dict(parts))

    @contextmanager
    def phase(self, name: str, role: str) -> Iterator[None]:
        self.calls[name] += 1
        key = (name, self.calls[name])
        self.phase_name, self.phase_role = name, role
        self._new_pass("forward")
        self._pass_base = self._pass
        self.starts[key] = self.live()
        try:
            yield
        except BaseException:
            self.failed_phase = self.failed_phase or name
            raise
        finally:
            self._settle_sum()
            self.ends[key] = self.live()
            self.phase_name, self.phase_role = None, "other"
            self._new_pass("forward")

    @contextmanager
    def acting_as(self, role: str) -> Iterator[None]:
        """What is made in the block outside any phase is `role`'s (no region peaks are kept)."""
        previous, self.phase_role = self.phase_role, role
        try:
            yield
        finally:
            self.phase_role = previous

    @contextmanager
    def loading(self, role: str) -> Iterator[None]:
        self.loading_role = role
        try:
            yield
        finally:
            self.loading_role = None

    def relabel(self, tensor: torch.Tensor, role: str, kind: str) -> None:
        """Give the storages behind `tensor` the label role/kind (tracked or not yet)."""
        super()._update_and_maybe_create_winfos(tensor, label(role, kind))

    def layer_map(self, module: torch.nn.Module) -> None:
        """Note which storages are decoder layer k's weights (and which are weights outside the layers)."""
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            layer = layer_index(name)
            for storage in get_untyped_storages(tensor):  # a sharded (DTensor) weight: its local shard's
                self._layers[storage] = layer

    def layer_of(self, tensor: torch.Tensor, layer: int) -> None:
        """Note that `tensor`'s storage is decoder layer `layer`'s weights (-1: outside the layers), as
        FSDP2's gathered copy of a unit's weights is while the unit computes."""
        self._layers[tensor.untyped_storage()] = layer

    def grads_as(self, module: torch.nn.Module, role: str) -> None:
        """Label the gradients of `module`'s trainable parameters as `role`'s when they are accumulated
        (an FSDP2 module's: `rlbench.estimate.ranks.label_sharded`)."""
        for p in module.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda q, role=role: self.relabel(q.grad, role, "gradients"))

    # -- MemTracker hooks: every new storage gets a role/kind label ------------------------------
    def _label_new(self, reftype: Any, t: torch.Tensor) -> Any:
        if isinstance(reftype, Label):
            return reftype
        if self.loading_role is not None:
            return label(self.loading_role, "weights")
        if reftype in (_MemRefType.PARAM, _MemRefType.BUFFER):
            return label(self.phase_role, "weights")
        if reftype == _MemRefType.GRAD:
            return label(self.phase_role, "gradients")
        if reftype == _MemRefType.OPT:
            return label(self.phase_role, "optimizer")
        if self.vocab_size and t.dim() >= 1 and t.shape[-1] == self.vocab_size and t.numel() > self.vocab_size:
            return label(self.phase_role, "logits")
        return label(self.phase_role, "activations")

    def _track(self, reftype: Any, t: torch.Tensor) -> None:
        super()._track(self._label_new(reftype, t), t)

    def _update_and_maybe_create_winfos(self, t: torch.Tensor, reftype: Any, update_existing: bool = False):
        return super()._update_and_maybe_create_winfos(t, self._label_new(reftype, t), update_existing)

    # -- execution --------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.prim.device.default:  # `tensor.device`: asked often, allocates nothing
            return args[0].device
        if DTensor in types:  # FSDP2's sharded parameters: DTensor runs its local ops, which come back here
            return NotImplemented
        outer = active_fake_mode()
        if outer is not None and outer is not self.fake_mode:  # DTensor's sharding propagation: metadata only
            return func(*args, **(kwargs or {}))
        self._settle_sum()
        kwargs = kwargs or {}
        tensors = _tensors(args) + _tensors(tuple(kwargs.values()))
        result = self._execute(func, args, kwargs, tensors)
        reftype = _MemRefType.OPT if self._in_opt else _MemRefType.ACT
        for t in _tensors(result if isinstance(result, (tuple, list)) else (result,)):
            self._track(reftype, t)
        if self._may_sum_in_place(func, args, kwargs, result):
            self._pending_sum = (self._region_key(tensors), self._live_total(), self.live(),
                                 result.untyped_storage().nbytes(), self._label_new(_MemRefType.ACT, result).value,
                                 [weakref.ref(t.untyped_storage()) for t in args[:2]])
            return result
        scratch = KERNEL_SCRATCH.get(func)
        self._note_region(tensors, scratch(args) if scratch is not None else 0, args[0] if scratch else None)
        return result

    def _may_sum_in_place(self, func, args, kwargs, result) -> bool:  # type: ignore[no-untyped-def]
        """An add autograd may do in place: two like, dense tensors summed in the backward pass, the
        first (the sum so far) no view (a view's storage is its base's too, which autograd does not
        write into: the LM head's gradient of a tied weight, a transposed product, when it arrives
        before the embedding's)."""
        if func is not torch.ops.aten.add.Tensor or kwargs.get("alpha", 1) != 1 or self.phase_name is None:
            return False
        if torch.is_grad_enabled() or torch._C._current_autograd_node() is None or self._in_opt:
            return False
        a, b = args[:2]
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and isinstance(result, torch.Tensor)
                and a.shape == b.shape == result.shape and a.dtype == b.dtype == result.dtype
                and a.is_contiguous() and b.is_contiguous() and a.numel() > 0 and not a._is_view())

    def _settle_sum(self) -> None:
        """Count the pending add's instant: in place (less the new tensor) when one of its operands
        died right after it, as autograd's buffer does when it holds the only reference; else as it was."""
        if self._pending_sum is None:
            return
        key, total, parts, nbytes, name, operands = self._pending_sum
        self._pending_sum = None
        if key is None:
            return
        if any(ref() is None for ref in operands):
            parts = {**parts.parts, name: parts.parts.get(name, 0) - nbytes}
            total -= nbytes
            self._commit_peak(key, total, lambda: Peak(total, {k: v for k, v in parts.items() if v}))
        else:
            self._commit_peak(key, total, lambda: parts)

    def _live_total(self) -> int:
        return sum(snap[TOTAL] for snap in self._curr_mem_snap.values())

    def _execute(self, func, args, kwargs, tensors):  # type: ignore[no-untyped-def]
        if any(isinstance(t, FakeTensor) or t.is_meta for t in tensors):  # meta: a model being given storage
            if func is torch.ops.aten._local_scalar_dense.default:
                return True if args[0].dtype == torch.bool else 1  # a logged loss, a norm: any value does
            args, kwargs = self._twins(args), dict(zip(kwargs, self._twins(tuple(kwargs.values()))))
            out = memo_call(self.fake_mode, func, args, kwargs)
            if func in SAMPLING_OPS:  # a token sampled from fake logits: never EOS (the worst case)
                return torch.full(out.shape, self.worst_token, dtype=torch.long, device=out.device)
            return out
        if tensors and sum(t.numel() * t.element_size() for t in tensors) <= REAL_LIMIT // 16:
            return func(*args, **kwargs)  # small real inputs: run for real (values may be read)
        try:
            with self.fake_mode:
                fake = func(*self._twins(args), **kwargs)
        except (DynamicOutputShapeException, DataDependentOutputException):
            return func(*args, **kwargs)  # nonzero(), .item() of a real mask: real values needed
        outputs = _tensors(fake if isinstance(fake, (tuple, list)) else (fake,))
        if sum(t.numel() * t.element_size() for t in outputs) > REAL_LIMIT:
            return fake
        if not tensors and any(t.is_floating_point() or t.is_complex() for t in outputs):
            return fake  # a new float tensor (a cache, a buffer) is model data: fake
        return func(*args, **kwargs)

    def _twins(self, values: tuple) -> tuple:
        """`values` with each real tensor replaced by a fake one of the same metadata (made once per
        tensor: cheaper than the fake mode's own conversion, and values are never read)."""

        def twin(v: Any) -> Any:
            if isinstance(v, torch.Tensor) and not isinstance(v, FakeTensor):  # real, or meta
                fake = self._fakes.get(v)
                if fake is None:
                    fake = empty_like(self.fake_mode, v)
                    self._fakes[v] = fake
                return fake
            if isinstance(v, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in v):
                return type(v)(twin(x) for x in v)
            return v

        return tuple(twin(v) for v in values)

    # -- regions and their peaks ----------------------------------------------------------------
    def _new_pass(self, kind: str) -> None:
        self._pass += 1
        self._pass_kind, self._segment = kind, "before"

    def _note_region(self, tensors: list[torch.Tensor], scratch: int = 0, like: torch.Tensor | None = None) -> None:
        key = self._region_key(tensors)
        if key is None:
            return
        total = self._live_total() + scratch

        def now() -> Peak:
            live = self.live()
            if scratch:  # the kernel's buffer, counted as what its input is
                name = self._label_new(_MemRefType.ACT, like).value
                return Peak(live.total + scratch, {**live.parts, name: live.parts.get(name, 0) + scratch})
            return live

        self._commit_peak(key, total, now)

    def _region_key(self, tensors: list[torch.Tensor]) -> tuple | None:
        """The region the operator on `tensors` is in (passes and segments advanced); None outside phases."""
        if self.phase_name is None:
            return None
        kind = "optimizer" if self._in_opt else ("backward" if torch._C._current_autograd_node() is not None
                                                 else "forward")
        if kind != self._pass_kind:
            self._new_pass(kind)
        layers = {self._layers.get(t.untyped_storage()) for t in tensors} - {None}
        inside = {k for k in layers if k >= 0}
        if len(inside) > 1:
            self._segment = "all"
        elif inside:
            k = inside.pop()
            self._segment = "first" if k == 0 else "last" if k == self.depth - 1 else "middle"
        elif layers and self._segment != "before":
            self._segment = "after"
        return (self.phase_name, self.calls[self.phase_name], self._pass - self._pass_base, self._segment)

    def _commit_peak(self, key: tuple, total: int, now: Any) -> None:
        peak = self.peaks.get(key)
        if peak is None or total > peak.total:
            self.peaks[key] = now()
