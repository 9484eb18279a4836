"""`trainer.engine=megatron`: megatron-core's DistributedDataParallel + optimizer instead of the lean glue.

What it adds over the lean engine (recipes/training.py), all megatron-core's own code:
- DistributedDataParallel: contiguous fp32 grad buffers (`main_grad`), bucketed all-reduce, optional overlap;
- `trainer.distributed_optimizer=true`: ZeRO-1 (optimizer state and fp32 master weights sharded over DP;
  grads reduce-scattered, params all-gathered);
- bf16 master weights: with `precision=bf16` the model holds bf16 parameters and the optimizer keeps fp32 main
  copies (Float16OptimizerWithFloat16Params / DistributedOptimizer), instead of fp32 params + autocast;
- `finalize_model_grads` (DP reduction, tied-embedding sync across PP, TP averaging of replicated towers,
  per-token scaling) and megatron's grad clipping. The lr schedule is :class:`WarmupCosine`, NeMo
  CosineAnnealing's formula (what the lean engine runs) applied to megatron's param groups, so both engines
  follow the same lr curve; the vision tower's group runs at `optim.vision_lr_mult` x lr.

Runs on GPUs (NCCL) and, through the CPU shim (DDP's stream wait, the optimizer's clip assert and tensor-type
checks), on CPU with gloo, where the tests check it: fp32 losses equal the lean engine's (single process, TP=2,
PP=2), and DP=2 + ZeRO-1 + bf16 parameters resume bit-exactly after a kill. Not yet run on a GPU (no GPU was lent
to the session that wrote it).
"""

from __future__ import annotations

import math
from typing import Any

import torch


class WarmupCosine:
    """NeMo CosineAnnealing (warmup_steps, max_steps, one min_lr) on a megatron optimizer's param groups; each
    group's peak is its own `max_lr` (set by the vision-tower override)."""

    def __init__(self, optimizer, *, warmup_steps: int, max_steps: int, min_lr: float) -> None:
        self.optimizer, self.warmup_steps, self.max_steps, self.min_lr = optimizer, warmup_steps, max_steps, min_lr
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int, peak: float) -> float:
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return peak * (step + 1) / (self.warmup_steps + 1)
        if step > self.max_steps:
            return self.min_lr
        span = max(1, self.max_steps - self.warmup_steps)
        return (peak - self.min_lr) * 0.5 * (1 + math.cos(math.pi * (step - self.warmup_steps) / span)) + self.min_lr

    def _apply(self) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(self.last_step, g["max_lr"])

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict[str, int]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.last_step = int(state["last_step"])
        self._apply()


def model_overrides(bf16: bool) -> dict[str, Any]:
    """TransformerConfig fields for bf16 parameters (fp32 master weights live in the optimizer)."""
    return {"bf16": True} if bf16 else {}  # params_dtype goes to build_vlm itself


def wrap(model, *, distributed_optimizer: bool, bf16: bool = False, overlap_grad_reduce: bool = False):
    """DDP(model), with megatron's Float16Module in between for bf16 parameters (it casts every parameter,
    norms included, to bf16, feeds bf16 inputs to the first stage and returns fp32 from the last)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    if bf16:
        model = Float16Module(model.config, model)
    ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=overlap_grad_reduce,
                                            use_distributed_optimizer=distributed_optimizer,
                                            check_for_nan_in_grad=True, average_in_collective=False)
    return DistributedDataParallel(config=model.config, ddp_config=ddp_cfg, module=model)


def build_optimizer(ddp, opt, *, bf16: bool, distributed_optimizer: bool, max_steps: int):
    """megatron optimizer (+ scheduler) for `ddp`; `opt` is recipes.training.OptimConfig."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer.optimizer_config import ParamKey, ParamWithNamePredicate

    cfg = OptimizerConfig(optimizer="adam", lr=opt.lr, min_lr=opt.min_lr, weight_decay=opt.weight_decay,
                          adam_beta1=opt.betas[0], adam_beta2=opt.betas[1], adam_eps=opt.eps, clip_grad=opt.clip_grad,
                          bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
                          use_distributed_optimizer=distributed_optimizer)
    overrides = None
    if opt.vision_lr_mult != 1.0:
        vision = ParamWithNamePredicate(name="vision_tower", fn=lambda p, name: "vision_model." in name)
        overrides = {ParamKey(with_name_predicate=vision): {"max_lr": opt.lr * opt.vision_lr_mult,
                                                            "min_lr": opt.min_lr * opt.vision_lr_mult}}
    optimizer = get_megatron_optimizer(cfg, [ddp], config_overrides=overrides)
    for g in optimizer.param_groups:
        g.setdefault("max_lr", opt.lr)
    return optimizer, WarmupCosine(optimizer, warmup_steps=opt.warmup_steps, max_steps=max_steps, min_lr=opt.min_lr)


def train_step(module, microbatches, forward_step, n_tokens_local: torch.Tensor) -> tuple[list, float, bool]:
    """One global batch with megatron's DDP + optimizer: (losses from the schedule, grad norm, step taken)."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    ddp, optimizer, scheduler = module.ddp, module.megatron_optimizer, module.megatron_scheduler
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(microbatches), model=[ddp],
        num_microbatches=len(microbatches), seq_length=microbatches[0]["input_ids"].shape[1],
        micro_batch_size=microbatches[0]["input_ids"].shape[0], forward_only=False)
    # DP reduction, tied embeddings across PP, TP-replicated towers, then / (tokens of the global batch)
    finalize_model_grads([ddp], num_tokens=n_tokens_local.to(torch.int))
    ok, norm, _ = optimizer.step()
    scheduler.step()  # like the lean engine (and NeMo): the schedule follows training steps
    return losses, float(norm or 0.0), bool(ok)


def state_dict(module, ckpt_dir) -> dict[str, Any]:
    """Per-rank optimizer + scheduler state (resume needs the same layout, like the lean engine). With the
    distributed optimizer the sharded fp32 master weights + Adam moments are gathered to DP rank 0 and written to
    <ckpt>/optimizer/param_state_pp*_tp*.pt (collective over DP)."""
    from megatron.core import parallel_state as ps

    opt = module.megatron_optimizer
    state = {"optimizer": opt.state_dict(), "scheduler": module.megatron_scheduler.state_dict()}
    if module.distributed_optimizer:
        opt.save_parameter_state(str(_param_state_path(ckpt_dir, ps)))
        state["adam_steps"] = [st["step"].clone() for st in _shard_states(opt) if "step" in st]
    return state


def _shard_states(opt) -> list[dict[str, Any]]:
    """The torch optimizer state of each main-param shard, in param-group order."""
    inner = [o.optimizer for o in getattr(opt, "chained_optimizers", [opt])]
    return [o.state[p] for o in inner for g in o.param_groups for p in g["params"] if p in o.state]


def load_state_dict(module, state: dict[str, Any], ckpt_dir) -> None:
    from megatron.core import parallel_state as ps

    opt = module.megatron_optimizer
    opt.load_state_dict(state["optimizer"])
    if module.distributed_optimizer:
        # megatron 0.19 writes main params + Adam moments but not torch Adam's per-param "step" tensor (TE/apex
        # FusedAdam keep no such tensor), and then fails on it when loading: take it out around the load and
        # restore it from our own per-rank state
        shard_states = _shard_states(opt)
        for st in shard_states:
            st.pop("step", None)
        opt.load_parameter_state(str(_param_state_path(ckpt_dir, ps)))
        steps = state.get("adam_steps", [])
        if steps and len(steps) != len(shard_states):
            raise ValueError(f"checkpoint {ckpt_dir} has Adam steps for {len(steps)} parameter shards, this run has "
                             f"{len(shard_states)}: resume with the same layout as the save")
        for st, step in zip(shard_states, steps):
            st["step"] = step.clone()
    module.megatron_scheduler.load_state_dict(state["scheduler"])


def _param_state_path(ckpt_dir, ps):
    from pathlib import Path

    d = Path(ckpt_dir) / "optimizer"
    d.mkdir(parents=True, exist_ok=True)
    return d / (f"param_state_pp{ps.get_pipeline_model_parallel_rank()}"
                f"_tp{ps.get_tensor_model_parallel_rank()}.pt")


def describe(module) -> dict[str, str]:
    """Which dtypes the run really used (reported in summary.json)."""
    inner = [o.optimizer for o in getattr(module.megatron_optimizer, "chained_optimizers", [module.megatron_optimizer])]
    main = next(p for o in inner for g in o.param_groups for p in g["params"])
    return {"engine": "megatron", "distributed_optimizer": str(module.distributed_optimizer),
            "param_dtype": str(next(module.ddp.parameters()).dtype), "master_param_dtype": str(main.dtype),
            "optimizer": type(inner[0]).__name__}
