"""Several processes (`accelerate launch`, `torchrun`): which one is the main process, a barrier, an or over ranks.
Each is a no-op in a single process."""

from __future__ import annotations

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
