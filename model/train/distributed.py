"""Training on several processes with torch's own engine: ``torchrun`` + DDP (or FSDP).

``torchrun`` starts ``gazex train`` once per process and tells each its place through the
environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``; :func:`from_environment`).
:func:`process_group` then joins the group (NCCL on CUDA, gloo on CPU), puts the process
on ``cuda:LOCAL_RANK`` and leaves the group at the end. Without those variables nothing
here runs and training is the single process it always was.

How the work is shared (:func:`model.train.loop.train` does the rest):

- ``--batch-size`` is the global batch. Every rank draws the same shuffled order from the
  shared seed, cuts it into the same global batches and takes its own contiguous slice of
  each (:func:`local_slice`), so one process and N processes see the same examples at each
  step.
- The loss is computed by :class:`LossModule` (a thin module around
  :func:`model.train.losses.compute_losses`), and that module, not the model, is what
  DDP or FSDP wraps: ``compute_losses`` calls the model's parts directly, never
  ``GazeXModel.forward``, so wrapping the model itself would not synchronise a gradient.
- Rank 0 alone writes the checkpoint; every rank resumes from it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from model.architecture import GazeXModel
from model.train.losses import compute_losses

logger = logging.getLogger(__name__)

Strategy = Literal["ddp", "fsdp"]
STRATEGIES: tuple[Strategy, ...] = ("ddp", "fsdp")
#: How long a rank waits at a collective (others at the barrier while rank 0 fits the
#: thresholds and the domain gate on all the training films) before the run fails.
TIMEOUT = timedelta(hours=1)

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run; the default is the single process of old."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    strategy: Strategy = "ddp"

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world_size}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}: one of {STRATEGIES}")
        if self.strategy == "fsdp" and self.world_size < 2:
            raise ValueError(
                "--strategy fsdp shards the model over several processes: launch with "
                "torchrun --nproc-per-node N (N > 1), or leave it at ddp"
            )

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, draws the bar and writes the checkpoint."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process (a process group to talk to)."""
        return self.world_size > 1


def from_environment(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(world size, rank, local rank) as ``torchrun`` sets them, or None when not launched
    by it (no ``WORLD_SIZE``)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)"
        ) from None
    return world, rank, local


def check_batch_size(batch_size: int, world_size: int) -> None:
    """``--batch-size`` is the global batch: ValueError unless each process gets an equal
    whole share of it."""
    if batch_size < 1 or batch_size % world_size:
        raise ValueError(
            f"--batch-size {batch_size} is the global batch and must be a positive multiple "
            f"of the {world_size} processes"
        )


@contextmanager
def process_group(
    device: str | None, strategy: Strategy = "ddp", environ: Mapping[str, str] | None = None
) -> Iterator[tuple[Distributed, str | torch.device | None]]:
    """Join the ``torchrun`` process group for the duration of the block.

    Yields this process's :class:`Distributed` and the device it trains on: under torchrun
    with CUDA (``device`` None or ``cuda``), ``cuda:LOCAL_RANK`` and NCCL; otherwise the
    ``device`` asked for and gloo. Without torchrun it yields the single process and
    ``device`` unchanged (an ``fsdp`` strategy is then a ValueError). The group is
    destroyed on the way out, error or not.
    """
    found = from_environment(environ)
    if found is None or found[0] == 1:
        rank = found[1] if found is not None else 0
        yield Distributed(1, rank, 0, strategy), device
        return
    world, rank, local = found
    dist = Distributed(world, rank, local, strategy)
    wants_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if wants_cuda:
        dev: str | torch.device = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = device or "cpu"
        backend = "gloo"
    torch.distributed.init_process_group(backend, timeout=TIMEOUT)
    logger.info("rank %d of %d on %s (%s, %s)", rank, world, dev, backend, strategy)
    try:
        yield dist, dev
    finally:
        torch.distributed.destroy_process_group()


def barrier(dist: Distributed) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if not dist.active:
        return
    if torch.distributed.get_backend() == "nccl":
        torch.distributed.barrier(device_ids=[dist.local_rank])
    else:
        torch.distributed.barrier()


def global_steps(examples: int, batch_size: int, world_size: int = 1) -> int:
    """Steps in an epoch of ``examples``: the global batches, the last one dropped when
    it holds fewer examples than there are processes (some rank would have none)."""
    full, rest = divmod(examples, batch_size)
    return full + (1 if rest >= world_size else 0)


def local_slice(batch: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's contiguous share of a global batch: the first ``len % world`` ranks
    take one more when it does not divide (only the epoch's last batch)."""
    base, extra = divmod(len(batch), world_size)
    start = rank * base + min(rank, extra)
    return list(batch[start : start + base + (1 if rank < extra else 0)])


def sum_over_ranks(
    values: dict[str, float], dist: Distributed, device: torch.device
) -> dict[str, float]:
    """Each value summed over the ranks (the same keys on every rank)."""
    if not dist.active:
        return dict(values)
    keys = list(values)  # the same losses in the same order on every rank
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist(), strict=True))


def spread(value: int, dist: Distributed, device: torch.device) -> tuple[int, int]:
    """The smallest and largest ``value`` over the ranks (a collective)."""
    if not dist.active:
        return value, value
    both = torch.tensor([-value, value], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
    return -int(both[0]), int(both[1])


class LossModule(nn.Module):
    """``compute_losses(model, batch, ...)`` as a module's forward: what DDP/FSDP wrap."""

    def __init__(
        self,
        model: GazeXModel,
        *,
        finding_weight: float = 1.0,
        box_weight: float = 2.0,
        own_gaze: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.finding_weight = finding_weight
        self.box_weight = box_weight
        self.own_gaze = own_gaze

    def forward(
        self,
        batch: dict[str, Any],
        stage: str,
        label_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        return compute_losses(
            self.model,
            batch,
            stage,
            label_weights,
            finding_weight=self.finding_weight,
            box_weight=self.box_weight,
            own_gaze=self.own_gaze,
        )


def ddp(
    module: LossModule, dist: Distributed, device: torch.device, *, find_unused: bool
) -> nn.Module:
    """``module`` under DistributedDataParallel (itself in a single process).

    ``find_unused`` must be set when some trainable parameter gets no gradient from this
    stage's losses (DDP otherwise waits for it forever): see the caller. Parameters no
    rank used keep ``grad`` None, so AdamW skips them exactly as in one process.
    """
    if not dist.active:
        return module
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused,
    )


def fully_shard_losses(module: LossModule) -> nn.Module:
    """``module`` sharded with FSDP2 (``fully_shard``): each decoder layer and vision
    block its own unit (the backbone's ``_no_split_modules``), the rest (embeddings, tied
    LM head, the GazeX heads) in the root unit. Works on gloo (CPU) as on NCCL."""
    from torch.distributed.fsdp import fully_shard

    units: set[str] = set()
    for sub in module.modules():
        units.update(getattr(sub, "_no_split_modules", None) or ())
    for sub in module.model.modules():
        if type(sub).__name__ in units:
            fully_shard(sub)
    fully_shard(module)
    return module


def full_states(
    wrapped: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The FSDP-sharded model's and optimizer's full (unsharded, CPU) state dicts; a
    collective every rank calls; only rank 0 gets them (the others get empty dicts)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(wrapped, options=options)
    optimizer_state = get_optimizer_state_dict(wrapped, optimizer, options=options)
    prefix = "model."
    return {k.removeprefix(prefix): v for k, v in model_state.items()}, dict(optimizer_state)


def load_full_optimizer_state(
    wrapped: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a :func:`full_states` optimizer state into the FSDP-sharded optimizer (every
    rank holds the whole dict, read from ``training_state.pt``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        wrapped, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


def parameter_digest(module: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of the parameters' names and float32 values.

    Buffers are left out: DDP sends rank 0's batch-norm statistics to the others at each
    forward, after which each rank's own batch moves them again. A sharded (FSDP)
    parameter is gathered first, so every rank must call this.
    """
    digest = hashlib.sha256()
    for name, param in module.named_parameters():
        value = param.detach()
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        digest.update(name.encode())
        digest.update(value.float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
