"""The training engine of every stage recipe: Lightning runs the loop, megatron-core does the parallel optimisation.

- every process runs a Lightning ``Trainer`` on a ``SingleDeviceStrategy`` (its own GPU, or the CPU); process groups
  and TP/PP/CP/DP are megatron's (recipes/models/parallel.py), so Lightning never wraps the model itself;
- :class:`VLMTrainingModule` uses manual optimisation: one Lightning step = one global batch = megatron's
  ``forward_backward_func`` over the micro-batches (pipeline schedule when PP > 1), then ``finalize_model_grads``
  (DP reduction, tied-embedding sync across PP, TP averaging of replicated towers, per-token normalisation) and
  megatron's optimizer step (grad clipping included);
- megatron-core's DistributedDataParallel holds contiguous fp32 grad buffers; ``trainer.distributed_optimizer=true``
  shards optimizer state and fp32 master weights over DP (ZeRO-1); with ``precision=bf16`` the model holds bf16
  parameters (megatron's Float16Module) and the optimizer keeps fp32 master copies; fp32 runs (CPU, parity tests)
  keep fp32 parameters;
- the lr schedule is :class:`WarmupCosine` (NeMo CosineAnnealing's formula) on megatron's param groups; the vision
  tower's group runs at ``optim.vision_lr_mult`` x lr.
On CPU (gloo) this runs through the CPU shim (recipes/models/megatron_cpu_shim.py).
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterator

import torch
from lightning.pytorch import LightningModule

from ecomvlm.recipes.config import OptimConfig

TRAINABLE = {
    "projector": ("vision_projection.",),
    "encoder": ("vision_model.",),
    "decoder": ("language_model.",),
}


def apply_freezing(model, train: list[str]) -> dict[str, int]:
    """Only the parts named in ``recipe.train`` learn. Returns parameter counts (this rank)."""
    unknown = sorted(set(train) - set(TRAINABLE))
    if unknown:
        raise ValueError(f"recipe.train has unknown parts {unknown}; choose from {sorted(TRAINABLE)}")
    prefixes = tuple(p for part in train for p in TRAINABLE[part])
    counts = {"trainable": 0, "frozen": 0}
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        counts["trainable" if p.requires_grad else "frozen"] += p.numel()
    return counts


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


def build_optimizer(ddp, opt: OptimConfig, *, bf16: bool, distributed_optimizer: bool, max_steps: int):
    """megatron optimizer (Adam, clipping at ``optim.clip_grad``) + the warmup-cosine schedule for `ddp`."""
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


def pad_microbatch(mb: dict[str, Any], length: int) -> dict[str, Any]:
    """Right-pad a collated micro-batch to `length` tokens; the tail is a masked-out segment of its own.
    Pipeline parallelism needs this: the schedule's p2p buffers have one shape for every micro-batch."""
    B, L = mb["input_ids"].shape
    if L >= length:
        return mb
    extra = length - L
    out = dict(mb)
    for k in ("input_ids", "labels"):
        out[k] = torch.cat([mb[k], mb[k].new_zeros((B, extra))], dim=1)
    out["loss_mask"] = torch.cat([mb["loss_mask"], mb["loss_mask"].new_zeros((B, extra))], dim=1)
    out["position_ids"] = torch.cat([mb["position_ids"], torch.arange(extra).expand(B, extra)], dim=1)
    out["cu_seqlens"] = [list(c) + [length] for c in mb["cu_seqlens"]]
    return out


def train_step(ddp, optimizer, scheduler, forward_step, microbatches: list[dict[str, Any]],
               n_tokens_local: torch.Tensor) -> tuple[list, float]:
    """One global batch: forward/backward over the micro-batches (megatron's schedule), gradient finalisation,
    optimizer + schedule step. Returns (the schedule's per-micro-batch loss dicts, grad norm)."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(microbatches), model=[ddp],
        num_microbatches=len(microbatches), seq_length=microbatches[0]["input_ids"].shape[1],
        micro_batch_size=microbatches[0]["input_ids"].shape[0], forward_only=False)
    # DP reduction, tied embeddings across PP, TP-replicated towers, then / (tokens of the global batch)
    finalize_model_grads([ddp], num_tokens=n_tokens_local.to(torch.int))
    _, norm, _ = optimizer.step()
    scheduler.step()
    return losses, float(norm or 0.0)


def _innermost(model):
    while hasattr(model, "module"):  # DDP(Float16Module(EcomVLM))
        model = model.module
    return model


class VLMTrainingModule(LightningModule):
    """Manual-optimisation LightningModule around one pipeline stage of an EcomVLM (megatron DDP + optimizer)."""

    def __init__(self, model, opt: OptimConfig, *, max_steps: int, start_step: int = 0, distributed_optimizer: bool,
                 bf16: bool, use_te_packing: bool = False, log_every: int = 10) -> None:
        super().__init__()
        self.model = model
        self.ddp = wrap(model, distributed_optimizer=distributed_optimizer, bf16=bf16)
        self.opt_cfg, self.max_steps, self.start_step = opt, max_steps, start_step
        self.distributed_optimizer, self.bf16 = distributed_optimizer, bf16
        self.use_te_packing, self.log_every = use_te_packing, log_every
        self.automatic_optimization = False
        self.data_counts = None  # () -> {"trained": n, "skipped:<reason>": n, ...} of this rank, logged with the loss
        self.history: list[dict[str, float]] = []
        self._t_start = time.perf_counter()

    @property
    def step(self) -> int:
        """Global training step (continues across resumes)."""
        return self.start_step + len(self.history)

    def configure_optimizers(self):
        self.megatron_optimizer, self.megatron_scheduler = build_optimizer(
            self.ddp, self.opt_cfg, bf16=self.bf16, distributed_optimizer=self.distributed_optimizer,
            max_steps=self.max_steps)
        # Lightning counts steps (global_step, max_steps, callbacks) by optimizer.step() calls; megatron's
        # optimizer is not a torch Optimizer, so a zero-lr stand-in over a private scalar is stepped with it
        self._step_counter = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        return torch.optim.SGD([self._step_counter], lr=0.0)

    def _forward_step(self, data_iterator, model):
        from ecomvlm.data_modules.packing import block_causal_mask, packed_seq_params

        b = next(data_iterator)
        dev = next(model.parameters()).device
        ids, pos, labels = (b[k].to(dev) for k in ("input_ids", "position_ids", "labels"))
        mask = b["loss_mask"].to(dev)
        attn, psp = None, None
        if self.use_te_packing and ids.shape[0] == 1:
            psp = packed_seq_params(b["cu_seqlens"][0], device=dev)
        elif any(len(c) > 2 for c in b["cu_seqlens"]):
            attn = block_causal_mask(b["cu_seqlens"], ids.shape[1]).to(dev)
        pix = b["pixel_values"].to(dev) if (b["pixel_values"] is not None and _innermost(model).pre_process) else None
        grid, sizes, tiles = (b[k].to(dev) if b.get(k) is not None else None
                              for k in ("image_grid_thw", "image_sizes", "image_tiles"))
        if pix is not None and self.bf16:
            pix = pix.to(torch.bfloat16)
        out = model(ids, pos, pixel_values=pix, image_grid_thw=grid, labels=labels, attention_mask=attn,
                    packed_seq_params=psp, image_sizes=sizes, image_tiles=tiles)

        def loss_func(per_token):
            loss_sum = (per_token.float() * mask).sum()
            n = mask.sum()
            return loss_sum, n.to(torch.int), {"loss_sum": loss_sum.detach(), "tokens": n.detach()}

        return out, loss_func

    def training_step(self, dataloader_iter):
        import torch.distributed as dist
        from megatron.core import parallel_state as ps

        # the step takes its batch itself (no read-ahead), so a checkpoint after it holds the data position after
        # exactly this step's micro-batches
        batch, _, _ = next(dataloader_iter)
        microbatches = batch["microbatches"]
        if ps.get_pipeline_model_parallel_world_size() > 1:  # one activation shape for the p2p exchange
            longest = max(mb["input_ids"].shape[1] for mb in microbatches)
            microbatches = [pad_microbatch(mb, longest) for mb in microbatches]

        t0 = time.perf_counter()
        dev = next(self.model.parameters()).device
        n_tok_local = torch.tensor(float(sum(mb["loss_mask"].sum().item() for mb in microbatches)), device=dev)
        n_tok, n_real = n_tok_local.clone(), torch.tensor(float(sum(mb["n_tokens"] for mb in microbatches)), device=dev)
        if dist.is_initialized() and ps.get_data_parallel_world_size() > 1:
            dist.all_reduce(n_tok, group=ps.get_data_parallel_group())
            dist.all_reduce(n_real, group=ps.get_data_parallel_group())

        losses, norm = train_step(self.ddp, self.megatron_optimizer, self.megatron_scheduler, self._forward_step,
                                  microbatches, n_tok_local)
        self.optimizers().step()  # the step-counting stand-in (see configure_optimizers)
        lr = self.megatron_optimizer.param_groups[0]["lr"]

        # the loss lives on the last pipeline stage: share it with every rank for logging
        loss_sum = torch.tensor(sum(float(x["loss_sum"]) for x in losses) if ps.is_pipeline_last_stage() else 0.0,
                                device=dev)
        if dist.is_initialized():
            if ps.get_data_parallel_world_size() > 1:
                dist.all_reduce(loss_sum, group=ps.get_data_parallel_group())
            if ps.get_pipeline_model_parallel_world_size() > 1:
                dist.all_reduce(loss_sum, group=ps.get_pipeline_model_parallel_group())
        dt = time.perf_counter() - t0
        rec = {"loss": (loss_sum / n_tok.clamp(min=1)).item(), "grad_norm": norm, "lr": lr,
               "tokens_per_s": n_real.item() / dt, "step_time_s": dt}
        self.history.append(rec)
        self._report(rec)
        return None

    def _report(self, rec: dict[str, float]) -> None:
        """TensorBoard at the global step (continuous across resumes) and a progress line every log_every steps."""
        step = self.step
        if self.loggers:
            metrics = {f"train/{k}": v for k, v in rec.items()}
            if self.data_counts is not None:
                metrics |= {f"data/{k.replace(':', '/')}": v for k, v in self.data_counts().items()
                            if not k.startswith("note:")}
            for logger in self.loggers:  # TensorBoard, and W&B when trainer.wandb.enabled
                logger.log_metrics(metrics, step=step)
        rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        if rank0 and (step % self.log_every == 0 or step == self.max_steps or len(self.history) == 1):
            done = len(self.history)
            eta = (time.perf_counter() - self._t_start) / done * (self.max_steps - step)
            print(f"[train] step {step}/{self.max_steps} loss {rec['loss']:.4f} lr {rec['lr']:.3e} "
                  f"grad_norm {rec['grad_norm']:.3f} tokens/s {rec['tokens_per_s']:,.0f} "
                  f"eta {time.strftime('%H:%M:%S', time.gmtime(eta))}", flush=True)

    # ---- optimizer state in checkpoints ----------------------------------------------------------------
    def optimizer_state(self, ckpt_dir) -> dict[str, Any]:
        """Per-rank optimizer + scheduler state (resume needs the save's layout). With the distributed optimizer
        the sharded fp32 master weights + Adam moments are gathered to DP rank 0 and written to
        <ckpt>/optimizer/param_state_pp*_tp*.pt (collective over DP)."""
        opt = self.megatron_optimizer
        state = {"optimizer": opt.state_dict(), "scheduler": self.megatron_scheduler.state_dict()}
        if self.distributed_optimizer:
            opt.save_parameter_state(str(_param_state_path(ckpt_dir)))
            state["adam_steps"] = [st["step"].clone() for st in _shard_states(opt) if "step" in st]
        return state

    def load_optimizer_state(self, state: dict[str, Any], ckpt_dir) -> None:
        opt = self.megatron_optimizer
        opt.load_state_dict(state["optimizer"])
        if self.distributed_optimizer:
            # megatron 0.19 writes main params + Adam moments but not torch Adam's per-param "step" tensor (TE/apex
            # FusedAdam keep no such tensor), and then fails on it when loading: take it out around the load and
            # restore it from our own per-rank state
            shard_states = _shard_states(opt)
            for st in shard_states:
                st.pop("step", None)
            opt.load_parameter_state(str(_param_state_path(ckpt_dir)))
            steps = state.get("adam_steps", [])
            if steps and len(steps) != len(shard_states):
                raise ValueError(f"checkpoint {ckpt_dir} has Adam steps for {len(steps)} parameter shards, this run "
                                 f"has {len(shard_states)}: resume with the same layout as the save")
            for st, step in zip(shard_states, steps):
                st["step"] = step.clone()
        self.megatron_scheduler.load_state_dict(state["scheduler"])

    def describe(self) -> dict[str, str]:
        """Which dtypes the run really used (reported in summary.json)."""
        opt = self.megatron_optimizer
        inner = [o.optimizer for o in getattr(opt, "chained_optimizers", [opt])]
        main = next(p for o in inner for g in o.param_groups for p in g["params"])
        return {"distributed_optimizer": str(self.distributed_optimizer),
                "param_dtype": str(next(self.ddp.parameters()).dtype), "master_param_dtype": str(main.dtype),
                "optimizer": type(inner[0]).__name__}


def _shard_states(opt) -> list[dict[str, Any]]:
    """The torch optimizer state of each main-param shard, in param-group order."""
    inner = [o.optimizer for o in getattr(opt, "chained_optimizers", [opt])]
    return [o.state[p] for o in inner for g in o.param_groups for p in g["params"] if p in o.state]


def _param_state_path(ckpt_dir):
    from pathlib import Path

    from megatron.core import parallel_state as ps

    d = Path(ckpt_dir) / "optimizer"
    d.mkdir(parents=True, exist_ok=True)
    return d / (f"param_state_pp{ps.get_pipeline_model_parallel_rank()}"
                f"_tp{ps.get_tensor_model_parallel_rank()}.pt")


class GlobalBatches(torch.utils.data.IterableDataset):
    """Groups the DataModule's micro-batches into lists of `num_microbatches` (one Lightning step each)."""

    def __init__(self, datamodule, num_microbatches: int) -> None:
        self.dm, self.n = datamodule, num_microbatches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it = self.dm.batches()
        while True:
            yield {"microbatches": [next(it) for _ in range(self.n)]}
