"""Which precision a stage trains, samples and scores in, and why — chosen by what bf16 does on this hardware.

    rlhf env                                   # the device, its bf16 speed class, and the rule below
    rlhf pipeline --set precision=fp32         # every stage and every generation in fp32
    rlhf sft --set sft.training.bf16=true      # one stage's training forced to bf16

The rule (`precision: auto`, the default), from `python -m bench.precision`:
- a CUDA GPU with bf16 (Ampere or newer): bf16;
- a CPU with AMX or AVX-512 BF16 (Intel Sapphire Rapids and newer, AMD Zen 4 and newer): bf16 for models of at least BF16_MIN_PARAMS
  parameters, fp32 below (a ~1M-parameter model's steps are too small for the AMX units to pay for the casts);
- any other CPU (AMD EPYC with AVX2, older Intel, Apple): fp32 (bf16 matrix products run ~100x slower there).
`precision: bf16` or `fp32` in the recipe sets it for the whole run; a stage's `training.bf16` overrides its training.
bf16 on a CPU is autocast (fp32 master weights, bf16 matrix products), as the Trainer does it; saved weights stay fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

# From `python -m bench.precision` on a 2-core Xeon (Sapphire Rapids, AMX) and a 2-core EPYC (Zen 4, AVX-512 BF16, no
# AMX): bf16 training steps were slower than fp32 at 0.33M parameters, even at ~1M, and faster from 2.2M (1.26x / 1.16x)
# up to 13.7M (1.59x / 1.75x); the crossover lies between.
BF16_MIN_PARAMS = 2_000_000


@dataclass(frozen=True)
class Precision:
    """The precision chosen for one piece of work, and the reason (printed in each stage's first line)."""

    bf16: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, as on macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def has_fast_bf16() -> bool:
    """bf16 where the hardware has units for it: a CUDA GPU with bf16, or a CPU with AMX / AVX-512 BF16."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def has_tf32() -> bool:
    """A CUDA GPU with TF32 tensor cores (Ampere and newer): fp32 matrix products there run in TF32 when allowed."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def describe_hardware() -> str:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return f"CUDA GPU {name} ({'bf16' if torch.cuda.is_bf16_supported() else 'no bf16'})"
    flags = cpu_flags()
    kind = "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "no AMX / AVX-512 BF16"
    return f"CPU ({kind})"


def choose(n_params: int | None, setting: str = "auto") -> Precision:
    """The precision for a model of `n_params` parameters under the recipe's `precision:` setting (auto | bf16 | fp32)."""
    if setting == "bf16":
        return Precision(True, "precision: bf16 in the recipe")
    if setting == "fp32":
        return Precision(False, "precision: fp32 in the recipe")
    if gpu_available():
        if has_fast_bf16():
            return Precision(True, "a GPU with bf16")
        return Precision(False, "this GPU has no bf16")
    if not has_fast_bf16():
        return Precision(False, "this CPU has no AMX / AVX-512 BF16: bf16 would be ~100x slower")
    if n_params is not None and n_params < BF16_MIN_PARAMS:
        return Precision(
            False, f"{n_params / 1e6:.2g}M parameters: below {BF16_MIN_PARAMS / 1e6:.0f}M, fp32 is faster on this CPU"
        )
    size = f"{n_params / 1e6:.3g}M parameters" if n_params is not None else "model size unknown"
    return Precision(True, f"a CPU with AMX / AVX-512 BF16 and {size}: bf16 is faster")


def rule_here() -> str:
    """What `precision: auto` picks on this machine, in one line (`rlhf env`)."""
    if gpu_available():
        return str(choose(None))
    if not has_fast_bf16():
        return f"fp32 for every model size: {choose(None).reason}"
    return (
        f"bf16 for models of {BF16_MIN_PARAMS / 1e6:.0f}M parameters or more (AMX / AVX-512 BF16), fp32 below "
        "(bf16 is slower than fp32 there); precision: bf16 | fp32 in a recipe overrides"
    )


def for_training(n_params: int | None, setting: str, training: dict) -> Precision:
    """A stage's training precision: its `training.bf16` when the recipe sets it, else `choose`."""
    if "bf16" in training:
        return Precision(bool(training["bf16"]), f"training.bf16: {str(bool(training['bf16'])).lower()} in the recipe")
    if training.get("fp16"):
        return Precision(False, "training.fp16: true in the recipe")
    return choose(n_params, setting)


def parameters_of(model) -> int:
    return sum(p.numel() for p in model.parameters())


def inference(model, setting: str = "auto"):
    """The precision context for no-grad work with `model` (sampling, scoring, evaluation, chat): bf16 autocast on the
    model's device where `choose` picks bf16 for its size, else nothing."""
    import torch

    if not choose(parameters_of(model), setting).bf16:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)
