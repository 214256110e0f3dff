"""A memo of the fake tensors an operator returns, keyed by its inputs' metadata: the estimate's
fast path past `FakeTensorMode`'s own dispatch.

A traced run repeats the same operators on tensors of the same shapes thousands of times (every
decoder layer, every micro-batch, every decode step, both steps, both traced depths).
`FakeTensorMode` caches its answers too, but its cache key is general (symbolic shapes, sparse and
nested tensors, every attribute of every input) and made afresh for each call: measured on the 7B
trace at 8 ranks, making the key and rebuilding the output took most of a fake operator's time.
This memo keeps, for one operator and the (shape, stride, dtype, device, offset) of each input
tensor and the value of every other argument, the metadata of what it returned, and makes the same
fake tensors again directly, as the fake mode's own cache does: a meta tensor of that shape (set to
the input's storage for a view) wrapped as a `FakeTensor`.

Memoised: ATen operators that write nothing (no in-place or out= operator: their schemas mark the
write), return tensors, and have no data-dependent output shape or random values; and only when
every output is a fake tensor either of a fresh storage of exactly its extent, at offset 0, or over
the storage of one of its inputs (a view). And in-place operators that write only their first
argument and return it (`copy_`, `add_`, `zero_`: the version counter is bumped above the
dispatch mode, and on fake tensors nothing else happens), when the first call left that argument's
metadata as it was. Anything else goes to the fake mode every time.
`tests/test_estimate_trace.py` holds a traced run with the memo against one without it: every
region peak, phase start and end is identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, in_kernel_invocation_manager

MAX_ENTRIES = 200_000  # a few hundred bytes each; cleared when full
SCALARS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)
_NOT_PURE = {torch.Tag.dynamic_output_shape, torch.Tag.data_dependent_output, torch.Tag.inplace_view,
             torch.Tag.nondeterministic_seeded}
_kinds: dict[Any, str | None] = {}
_memo: dict[tuple, Any] = {}
enabled = True
stats = {"hits": 0, "calls": 0}  # operators answered from the memo, and all it was asked
_UNFIT = object()  # a key whose outputs cannot be made from metadata
_SELF = object()  # a key whose operator returned its first argument, in place


def memo_kind(func: Any) -> str | None:
    """How the memo answers `func` (an ATen OpOverload): "pure", it only reads its inputs and returns
    tensors, new ones or views of its inputs; "self", it writes its first argument in place and
    returns it; None, not at all (out= operators, several written arguments, data-dependent shapes,
    random values, operators that change a tensor's metadata)."""
    if func in _kinds:
        return _kinds[func]
    schema = getattr(func, "_schema", None)
    found = None
    if (isinstance(func, torch._ops.OpOverload) and func.namespace == "aten" and schema is not None
            and not (_NOT_PURE & set(func.tags)) and len(schema.returns) > 0
            and not any(a.alias_info is not None for a in schema.arguments if a.kwarg_only)
            and all(str(r.type) in ("Tensor", "List[Tensor]") for r in schema.returns)):
        written = [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
        if not written and (func.is_view or not any(r.alias_info is not None for r in schema.returns)):
            found = "pure"
        elif written == [0] and len(schema.returns) == 1 and str(schema.returns[0].type) == "Tensor" \
                and schema.returns[0].alias_info is not None and schema.returns[0].alias_info.is_write:
            found = "self"
    _kinds[func] = found
    return found


def _key_of(value: Any) -> Any:
    """A hashable stand-in for one argument (None: one the memo does not handle)."""
    if isinstance(value, FakeTensor):
        return ("T", tuple(value.shape), value.stride(), value.dtype, value.device, value.storage_offset(),
                value.requires_grad, value.is_conj(), value.is_neg())
    if isinstance(value, SCALARS):
        return (type(value), value)
    if isinstance(value, (list, tuple)):
        parts = tuple(_key_of(v) for v in value)
        return None if any(p is None for p in parts) else (type(value), parts)
    return None


def memo_key(func: Any, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
    """The memo's key for `func(*args, **kwargs)`, None when it is not memoised."""
    if memo_kind(func) is None:
        return None
    parts = [func, torch.get_default_dtype(), torch.is_inference_mode_enabled()]
    for value in args:
        key = _key_of(value)
        if key is None:
            return None
        parts.append(key)
    for name, value in kwargs.items():
        key = _key_of(value)
        if key is None:
            return None
        parts.append((name, key))
    return tuple(parts)


def _extent(tensor: torch.Tensor) -> int:
    """Bytes from the tensor's first element to its last (what empty_strided gives it)."""
    if tensor.numel() == 0:
        return 0
    return (1 + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride()))) * tensor.element_size()


def _entry(out: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    """What makes `out` again, or _UNFIT: per output its metadata and the input whose storage it views
    (None: a storage of its own, of exactly its extent, at offset 0)."""
    single = isinstance(out, torch.Tensor)
    outputs = [out] if single else list(out) if isinstance(out, (list, tuple)) else None
    if not outputs or not all(isinstance(t, FakeTensor) and t.constant is None and t.layout == torch.strided
                              and not t.is_conj() and not t.is_neg() for t in outputs):
        return _UNFIT
    inputs = [t.untyped_storage()._cdata if isinstance(t, FakeTensor) else None
              for t in _flat((*args, *kwargs.values()))]
    meta, own = [], set()
    for t in outputs:
        storage = t.untyped_storage()._cdata
        source = inputs.index(storage) if inputs.count(storage) == 1 else None
        if source is None and storage in inputs:  # over a storage two inputs share
            return _UNFIT
        if source is None and (storage in own or t.storage_offset() != 0
                               or t.untyped_storage().nbytes() != _extent(t)):
            return _UNFIT
        own.add(storage)
        meta.append((source, tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.device, t.requires_grad))
    return (None if single else type(out), tuple(meta))


def _metadata(tensor: torch.Tensor) -> tuple:
    """What an in-place operator that changes only values leaves as it was."""
    return (tensor.untyped_storage()._cdata, tuple(tensor.shape), tensor.stride(), tensor.storage_offset(),
            tensor.dtype, tensor.device, tensor.requires_grad)


def _flat(values: tuple) -> list[Any]:
    return [x for v in values for x in (v if isinstance(v, (list, tuple)) else (v,))]


@contextmanager
def disabled() -> Iterator[None]:
    """Every operator to the fake mode, for the block (to compare with the memo)."""
    global enabled
    enabled = False
    try:
        yield
    finally:
        enabled = True


def empty_like(mode: FakeTensorMode, tensor: torch.Tensor) -> FakeTensor:
    """A fake tensor of `tensor`'s shape, strides, dtype and device (real or meta), made directly."""
    if tensor.is_meta:
        with mode:
            return torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device=tensor.device)
    with in_kernel_invocation_manager(mode):
        empty = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta")
    return FakeTensor(mode, empty, tensor.device)


def memo_call(mode: FakeTensorMode, func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    """`func(*args, **kwargs)` under `mode` (every tensor in them fake), from the memo when it can be."""
    key = memo_key(func, args, kwargs) if enabled else None
    stats["calls"] += 1
    entry = _memo.get(key) if key is not None else None
    if entry is _SELF:
        stats["hits"] += 1
        return args[0]
    if entry is None or entry is _UNFIT:
        before = _metadata(args[0]) if key is not None and entry is None and memo_kind(func) == "self" else None
        with mode:
            out = func(*args, **kwargs)
        if key is not None and entry is None:
            if len(_memo) >= MAX_ENTRIES:
                _memo.clear()
            if before is None:
                _memo[key] = _entry(out, args, kwargs)
            else:
                _memo[key] = _SELF if out is args[0] and _metadata(args[0]) == before else _UNFIT
        return out
    kind, meta = entry
    stats["hits"] += 1
    inputs = _flat((*args, *kwargs.values())) if any(m[0] is not None for m in meta) else []
    with in_kernel_invocation_manager(mode):
        empties = []
        for source, shape, stride, offset, dtype, _, grad in meta:
            empty = torch.empty_strided(shape, stride, dtype=dtype, device="meta", requires_grad=grad)
            if source is not None:  # a view: the input's storage
                empty.set_(inputs[source].untyped_storage(), offset, shape, stride)
            empties.append(empty)
    made = [FakeTensor(mode, empty, m[5]) for empty, m in zip(empties, meta)]
    return made[0] if kind is None else kind(made)
