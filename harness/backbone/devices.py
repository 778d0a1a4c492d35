"""Device rules every method and the trainer follow, and the guard that checks them.

1. **Random draws happen on the CPU**, from a CPU ``torch.Generator`` (or the CPU default
   generator, reseeded per epoch by the trainer), and the result is moved to the device with
   :func:`place` (a non-blocking copy from pinned memory on a GPU): :func:`randn`, :func:`rand`,
   :func:`randint`, :func:`randperm`. A seed then gives the same draws on a CPU and on a GPU,
   and a CPU generator never meets a CUDA factory call (which torch rejects). Dropout masks
   and the official AutoAttack's internal draws are the exceptions (the device's own RNG).
2. **Values come back to the host in one place**, :func:`to_host` — on an accelerator each
   call is a synchronisation, so hot loops keep running sums on the device and call it once
   per epoch (or per round) instead of ``.item()`` per step.
3. **Precision** is a setting: :func:`autocast` runs the generator, student and training-attack
   passes in bf16 when asked; evaluation runs under :func:`full_precision` (always fp32).

:class:`StrictRandomDraws` is a ``TorchFunctionMode`` that raises on any random draw onto a
device other than the CPU and on a generator whose device differs from the draw's. The test
suite runs every method on PyTorch's ``meta`` device under it (a device without data: mixing
it with CPU tensors raises, like CUDA does), and ``benchmarks/gpu_smoke.py`` on CUDA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch.overrides import TorchFunctionMode

from harness.errors import HarnessError

Precision = Literal["fp32", "bf16"]
DeviceLike = torch.device | str


def _shape(size: Sequence[int] | int | torch.Size) -> tuple[int, ...]:
    return (size,) if isinstance(size, int) else tuple(size)


def place(tensor: torch.Tensor, device: DeviceLike) -> torch.Tensor:
    """A CPU tensor on ``device`` without stalling the host: to a GPU through pinned memory with a
    non-blocking copy (a plain ``.to`` from pageable memory waits for the device's queue)."""
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def randn(size: Sequence[int] | int, *, generator: torch.Generator | None = None, device: DeviceLike = "cpu",
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, 1) of shape ``size`` drawn on the CPU (from ``generator`` if given), then placed on ``device``."""
    return place(torch.randn(_shape(size), generator=generator, dtype=dtype), device)


def rand(size: Sequence[int] | int, *, generator: torch.Generator | None = None, device: DeviceLike = "cpu",
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U[0, 1) of shape ``size`` drawn on the CPU, then placed on ``device``."""
    return place(torch.rand(_shape(size), generator=generator, dtype=dtype), device)


def randint(low: int, high: int, size: Sequence[int] | int, *, generator: torch.Generator | None = None,
            device: DeviceLike = "cpu") -> torch.Tensor:
    """Integers in [low, high) drawn on the CPU, then placed on ``device``."""
    return place(torch.randint(low, high, _shape(size), generator=generator), device)


def randperm(n: int, *, generator: torch.Generator | None = None, device: DeviceLike = "cpu") -> torch.Tensor:
    """A random permutation of 0..n−1 drawn on the CPU, then placed on ``device``."""
    return place(torch.randperm(n, generator=generator), device)


def randn_like(x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, 1) of ``x``'s shape, dtype and memory layout (e.g. channels-last: the draws fill memory
    in order, as ``torch.randn_like`` does), drawn on the CPU, on ``x``'s device."""
    return place(torch.empty_like(x, device="cpu").normal_(generator=generator), x.device)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor on the CPU, detached: the one device-to-host transfer (a sync on an accelerator).

    A ``meta`` tensor (the data-less device of the device-correctness tests) comes back as
    zeros of its shape and dtype, so code after it runs as it would on a GPU.
    """
    tensor = tensor.detach()
    if tensor.device.type == "meta":
        return torch.zeros(tensor.shape, dtype=tensor.dtype)
    return tensor.cpu()


def to_float(tensor: torch.Tensor) -> float:
    """A scalar tensor as a Python float through :func:`to_host` (one sync)."""
    return float(to_host(tensor))


# --------------------------------------------------------------------------- precision and compilation
def autocast(device: DeviceLike, precision: Precision) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``precision`` is bf16, else nothing (fp32).

    Without autocast's cache of cast weights: a generation round takes its optimizer steps inside
    one autocast region, and a cached bf16 copy of a weight would not see them (the generator
    would never change within the round).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise HarnessError(f"precision: bf16 autocast is not available on device type '{kind}'")
    return torch.autocast(kind, dtype=torch.bfloat16, cache_enabled=False)


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU computes bf16 natively (the ``avx512_bf16`` or ``amx_bf16`` flag of Linux's
    /proc/cpuinfo); without it, bf16 autocast on the CPU is emulated and slower than fp32. None
    where the flags cannot be read."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as stream:
                cpuinfo = stream.read()
        except OSError:
            return None
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def full_precision(device: DeviceLike) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device`` (evaluation is always fp32)."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(kind, enabled=False)


# --------------------------------------------------------------------------- the guard
RANDOM_FACTORIES = frozenset({"randn", "rand", "randint", "randperm", "normal", "bernoulli", "multinomial", "poisson",
                              "randn_like", "rand_like", "randint_like"})
RANDOM_IN_PLACE = frozenset({"uniform_", "normal_", "random_", "exponential_", "geometric_", "cauchy_", "log_normal_",
                             "bernoulli_"})


class RandomDrawOnDevice(RuntimeError):
    """A random draw that breaks rule 1 of this module."""


def _first_tensor(args: Sequence[Any]) -> torch.Tensor | None:
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


class StrictRandomDraws(TorchFunctionMode):
    """Raise on a random draw onto a non-CPU device, or from a generator on another device.

    ``with StrictRandomDraws(): ...`` — factory calls (``randn(..., device=D)``), ``*_like``
    calls, sampling from a tensor (``multinomial``, ``bernoulli``) and in-place fills
    (``uniform_``, ``normal_``, as ``nn.init`` uses) are checked.
    """

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in RANDOM_FACTORIES or name in RANDOM_IN_PLACE:
            self._check(name, args, kwargs)
        return func(*args, **kwargs)

    @staticmethod
    def _check(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        source = _first_tensor([*args, *kwargs.values()])
        if kwargs.get("device") is not None:
            target = torch.device(kwargs["device"])
        elif source is not None and (name in RANDOM_IN_PLACE or name not in ("randn", "rand", "randint", "randperm")):
            target = source.device
        else:
            target = torch.get_default_device()
        generator = kwargs.get("generator")
        if generator is not None and generator.device.type != target.type:
            raise RandomDrawOnDevice(f"{name}: generator on {generator.device.type} drawing onto {target.type}")
        if target.type != "cpu":
            raise RandomDrawOnDevice(f"{name}: random draw onto {target.type}; draw on a CPU generator, "
                                     "then .to(device) (harness.backbone.devices)")
