"""Several processes (`accelerate launch`, `torchrun`): which one is the main process, a barrier, an or over ranks,
and the sharded engines (ZeRO-3, FSDP): gathering a model for generation, loading frozen models whole.
Each is a no-op in a single process."""

from __future__ import annotations

import contextlib
import os


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """A barrier across the processes of `accelerate launch` / `torchrun`; nothing in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def any_process(flag: bool, device=None) -> bool:
    """`flag` or-ed over the processes of a distributed run (a signal may reach the ranks at different steps; a rank
    that stopped alone would leave the others waiting in a collective); `flag` itself in a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def peak_gpu_memory() -> dict:
    """{"peak_gpu_memory_gib": the most this process's GPU held (allocated by torch)} on a GPU; {} elsewhere."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}


def sharded(accelerator) -> bool:
    """Whether each process holds only a shard of the model's weights: DeepSpeed ZeRO-3 or FSDP. Generation and
    scoring with such a model are collective (every process must take part), and its state dict must be gathered."""
    state = accelerator.state
    if getattr(state, "deepspeed_plugin", None) is not None:
        return state.deepspeed_plugin.zero_stage == 3
    return str(accelerator.distributed_type).endswith("FSDP")


@contextlib.contextmanager
def whole_model(model_wrapped, accelerator):
    """The model, usable on this process for generation and scoring: ZeRO-3's partitions gathered (TRL's
    unwrap_model_for_generation), FSDP1's parameters summoned; FSDP2 gathers each block in its own hooks. Under both,
    every process must enter and run the same number of forward passes (`generate` sets synced_gpus itself)."""
    from trl.models.utils import unwrap_model_for_generation

    with unwrap_model_for_generation(model_wrapped, accelerator) as model:
        plugin = getattr(accelerator.state, "fsdp_plugin", None)
        if plugin is not None and plugin.fsdp_version == 1:
            from torch.distributed.fsdp import FullyShardedDataParallel

            with FullyShardedDataParallel.summon_full_params(model_wrapped, recurse=False):
                yield model
        else:
            yield model


@contextlib.contextmanager
def whole_loading():
    """Load a model whole on every process, also under FSDP's `fsdp_cpu_ram_efficient_loading` (which loads the
    weights on the first process only and leaves the others zero-filled until FSDP broadcasts them when it wraps the
    model being trained): for the frozen models loaded beside it (reference, reward models)."""
    before = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FSDP_CPU_RAM_EFFICIENT_LOADING", None)
        else:
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = before


def from_main_process(obj):
    """`obj` as the main process holds it, on every process (a choice each rank would measure for itself, such as the
    pre-training plan's throughput probe, must be one choice); `obj` itself in a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
