"""The devices `rlbench estimate --gpu NAME` knows, and the margin a fit keeps.

Memory is what each card reports as its total (nvidia-smi, MiB / 1024): a card sold as 80 GB
shows 79.6 to 80 GiB. `MARGIN`: a run is said to fit when the estimate, plus the device overhead
the tracer cannot see (`fit.DEVICE_OVERHEAD_GIB`), stays under 80% of that total; a study of 454
training runs (arXiv 2411.06465) saw no out-of-memory failure when its estimate stayed under 80%.

Names are matched without case, spaces, dashes or underscores ("h100", "H100-80GB" and
"h100_80gb" are one card).
"""

from __future__ import annotations

from rlbench.errors import UserError

MARGIN = 0.20  # a fit leaves this fraction of the card's memory free
# name -> GiB reported, and the names it is also known by
GPUS: dict[str, tuple[float, tuple[str, ...]]] = {
    "H100-80GB": (79.6, ("h100", "h100-sxm", "h100-pcie")),
    "H200": (140.4, ("h200-141gb",)),
    "A100-80GB": (80.0, ("a100",)),
    "A100-40GB": (40.0, ()),
    "L4": (22.5, ()),
    "A10G": (22.5, ()),
    "RTX-4090": (24.0, ("4090",)),
    "RTX-3090": (24.0, ("3090",)),
    "A6000": (48.0, ("rtx-a6000",)),
    "L40S": (45.0, ()),
}


def _key(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


_BY_KEY = {_key(alias): name for name, (_, aliases) in GPUS.items() for alias in (name, *aliases)}


def gpu_gib(name: str) -> tuple[float, str]:
    """(GiB, canonical name) of a known card; UserError naming the known ones otherwise."""
    canonical = _BY_KEY.get(_key(name))
    if canonical is None:
        raise UserError(f"--gpu: unknown card '{name}'; known: {', '.join(GPUS)} (or give --gpu-gib N)")
    return GPUS[canonical][0], canonical


def usable_bytes(total_gib: float) -> int:
    """What a run may use of a card of `total_gib` with the margin kept free."""
    return int(total_gib * (1 - MARGIN) * 2**30)
