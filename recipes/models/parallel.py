"""Process-group + megatron parallel-state setup shared by recipes, tests and the launcher's jobs.

One entry point, :func:`init_distributed`, works the same under ``torchrun``, under ``srun`` (SLURM env) and
as a plain single process; NCCL on GPUs, gloo (+ the CPU shim) otherwise. Parallel sizes are validated
*before* any process group exists, so an impossible layout fails with a message, not a hang.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any


@dataclass
class ParallelConfig:
    """Megatron parallel layout. DP is implied: world_size / (TP * PP * CP)."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1
    sequence_parallel: bool = False


class ParallelConfigError(ValueError):
    """An impossible parallel layout; the message lists every problem and how to fix it."""


def validate_parallel(
    parallel: ParallelConfig,
    world_size: int,
    *,
    num_attention_heads: int | None = None,
    num_query_groups: int | None = None,
    num_layers: int | None = None,
    vocab_size: int | None = None,
    seq_length: int | None = None,
    te_available: bool | None = None,
) -> int:
    """Check a layout against the world size and model dims. Returns the data-parallel size."""
    tp, pp, cp = (parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size,
                  parallel.context_parallel_size)
    problems: list[str] = []
    for name, v in (("tensor_model_parallel_size", tp), ("pipeline_model_parallel_size", pp),
                    ("context_parallel_size", cp)):
        if not isinstance(v, int) or v < 1:
            problems.append(f"{name}={v!r} must be a positive integer")
    if problems:
        raise ParallelConfigError("; ".join(problems))
    if world_size % (tp * pp * cp):
        problems.append(
            f"world size {world_size} is not divisible by TP*PP*CP = {tp}*{pp}*{cp} = {tp * pp * cp}; "
            f"change the parallel sizes or the number of GPUs (nodes x gpus_per_node)"
        )
    if num_attention_heads is not None and num_attention_heads % tp:
        problems.append(f"num_attention_heads={num_attention_heads} is not divisible by TP={tp}")
    if num_query_groups is not None and num_query_groups % tp:
        problems.append(f"num_query_groups (KV heads)={num_query_groups} is not divisible by TP={tp}")
    if num_layers is not None and num_layers % pp:
        problems.append(f"num_layers={num_layers} is not divisible by PP={pp} (uneven pipeline stages are not "
                        f"supported)")
    if vocab_size is not None and tp > 1 and vocab_size % tp:
        problems.append(f"vocab_size={vocab_size} must be padded to a multiple of TP={tp}")
    if seq_length is not None and cp > 1 and seq_length % (2 * cp):
        problems.append(f"seq_length={seq_length} must be divisible by 2*CP={2 * cp} for context parallelism")
    if parallel.sequence_parallel and tp == 1:
        problems.append("sequence_parallel=True needs TP > 1")
    if parallel.sequence_parallel and te_available is False:
        problems.append("sequence_parallel=True needs Transformer Engine (megatron's local norm asserts no SP)")
    if problems:
        raise ParallelConfigError("impossible parallel layout: " + "; ".join(problems))
    return world_size // (tp * pp * cp)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env() -> dict[str, Any]:
    """Rank/world/local rank from torchrun, else SLURM (srun), else a single local process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
        if world > 1 and "MASTER_ADDR" not in env:
            raise RuntimeError(
                "running under srun with several tasks but MASTER_ADDR is unset; the sbatch script must export "
                "MASTER_ADDR (first host of SLURM_JOB_NODELIST) and MASTER_PORT - use `ecomvlm launch`"
            )
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", "29500")
    else:
        # a lone process: its own free port (an inherited MASTER_PORT may belong to the parent's process group)
        rank, world, local = 0, 1, 0
        env["MASTER_ADDR"], env["MASTER_PORT"] = "127.0.0.1", str(_free_port())
    return {"rank": rank, "world_size": world, "local_rank": local}


def init_distributed(parallel: ParallelConfig, seed: int = 1234, timeout_s: int = 600,
                     **model_dims: Any) -> dict[str, Any]:
    """Init torch.distributed + megatron parallel state + RNG tracker. Idempotent for the same layout."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    info = dist_env()
    validate_parallel(parallel, info["world_size"], **model_dims)
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(info["local_rank"])
    else:
        from ecomvlm.recipes.models import megatron_cpu_shim

        megatron_cpu_shim.apply()
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=info["rank"],
            world_size=info["world_size"],
            timeout=timedelta(seconds=timeout_s),
        )
    if parallel_state.model_parallel_is_initialized():
        same = (parallel_state.get_tensor_model_parallel_world_size() == parallel.tensor_model_parallel_size
                and parallel_state.get_pipeline_model_parallel_world_size() == parallel.pipeline_model_parallel_size
                and parallel_state.get_context_parallel_world_size() == parallel.context_parallel_size)
        if not same:
            parallel_state.destroy_model_parallel()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
            context_parallel_size=parallel.context_parallel_size,
        )
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)
    info.update(
        device=torch.device("cuda", info["local_rank"]) if use_cuda else torch.device("cpu"),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
    )
    return info


def destroy_distributed() -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
