"""The training engine shared by every stage recipe: Lightning runs the loop, megatron-core does the parallelism.

Lean Lightning <-> megatron glue (nemo_toolkit 3.0 ships no MegatronStrategy):
- every process runs a Lightning ``Trainer`` on a ``SingleDeviceStrategy`` (its own GPU, or the CPU); process groups
  and TP/PP/CP/DP are megatron's (:func:`init_distributed`), so Lightning never wraps the model in DDP;
- :class:`VLMTrainingModule` uses manual optimisation: one Lightning step = one global batch = megatron's
  ``forward_backward_func`` over the micro-batches (pipeline schedule when PP > 1), then gradient finalisation
  (DP all-reduce, tied-embedding sync across PP, per-token normalisation), clipping with TP/PP-aware norms,
  AdamW step and a warmup + cosine schedule (NeMo's CosineAnnealing);
- checkpoints are megatron distributed checkpoints (:mod:`recipes.checkpointing`) written by a callback, with the
  optimizer, scheduler, data position and RNG states, so a killed run resumes on the same loss trajectory and a
  checkpoint can be loaded at another TP/PP.
This lean engine (``trainer.engine=lean``, the default and the CPU path) keeps fp32 parameters (bf16 runs use
bf16 autocast, Lightning's "bf16-mixed" scheme) and plain AdamW. ``trainer.engine=megatron`` swaps in
megatron-core's DistributedDataParallel + optimizer (ZeRO-1 with ``trainer.distributed_optimizer=true``, bf16
parameters with fp32 master weights): see :mod:`recipes.megatron_engine`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch

log = logging.getLogger("ecomvlm.train")

# modules a stage can train; everything else is frozen (requires_grad False, never touched by the optimizer)
TRAINABLE = {
    "projector": ("vision_projection.",),
    "encoder": ("vision_model.",),
    "decoder": ("language_model.",),
}


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr: float = 0.0
    vision_lr_mult: float = 0.2  # LLaVA-OneVision trains the vision tower at 1/5 of the LLM learning rate
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    clip_grad: float = 1.0


def apply_freezing(model, train: list[str]) -> dict[str, int]:
    unknown = sorted(set(train) - set(TRAINABLE))
    if unknown:
        raise ValueError(f"recipe.train has unknown parts {unknown}; choose from {sorted(TRAINABLE)}")
    prefixes = tuple(p for part in train for p in TRAINABLE[part])
    counts = {"trainable": 0, "frozen": 0}
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        counts["trainable" if p.requires_grad else "frozen"] += p.numel()
    return counts


def param_groups(model, opt: OptimConfig) -> list[dict[str, Any]]:
    """lr multiplier for the vision tower; no weight decay on norms and biases."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult = opt.vision_lr_mult if name.startswith("vision_model.") else 1.0
        wd = 0.0 if (p.dim() == 1 or "norm" in name) else opt.weight_decay
        groups.setdefault((mult, wd), []).append(p)
    return [{"params": ps, "lr": opt.lr * m, "lr_mult": m, "weight_decay": wd} for (m, wd), ps in groups.items()]


def make_scheduler(optimizer, opt: OptimConfig, max_steps: int):
    """Linear warmup then cosine to min_lr (NeMo's CosineAnnealing), per-group lr multipliers kept."""
    from nemo.core.optim.lr_scheduler import CosineAnnealing

    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    return CosineAnnealing(optimizer, max_steps=max_steps, warmup_steps=opt.warmup_steps,
                           min_lr=opt.min_lr)


# ---------------------------------------------------------------------------------------------------------
# gradients across megatron's groups
# ---------------------------------------------------------------------------------------------------------
def finalize_grads(model, n_tokens_global: torch.Tensor) -> None:
    """Sum grads over DP, sync tied embeddings across PP, average replicated (HF-wrapped) params over TP, and
    normalise by the number of loss tokens in the global batch (losses were summed per token)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    if ps.get_data_parallel_world_size() > 1:
        for p in params:
            dist.all_reduce(p.grad, group=ps.get_data_parallel_group())
    lm = model.language_model
    if ps.get_pipeline_model_parallel_world_size() > 1 and lm.share_embeddings_and_output_weights and (
            ps.is_pipeline_first_stage() or ps.is_pipeline_last_stage()):
        w = lm.shared_embedding_or_output_weight()
        if w is not None and w.requires_grad and w.grad is not None:
            dist.all_reduce(w.grad, group=ps.get_embedding_group())
    if ps.get_tensor_model_parallel_world_size() > 1:
        for p in params:
            if getattr(p, "average_gradients_across_tp_domain", False) or getattr(p, "sequence_parallel", False):
                dist.all_reduce(p.grad, group=ps.get_tensor_model_parallel_group())
                if getattr(p, "average_gradients_across_tp_domain", False):
                    p.grad /= ps.get_tensor_model_parallel_world_size()
    scale = 1.0 / n_tokens_global.clamp(min=1).item()
    for p in params:
        p.grad.mul_(scale)


def grad_norm(model) -> float:
    """Global L2 norm of the (finalised) grads of the whole model: TP shards summed, replicas counted once,
    pipeline stages summed, the tied output copy on the last stage skipped."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    tp_rank = ps.get_tensor_model_parallel_rank()
    lm = model.language_model
    skip = None
    if lm.share_embeddings_and_output_weights and not lm.pre_process and lm.post_process:
        skip = lm.shared_embedding_or_output_weight()
    sq = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    for p in model.parameters():
        if p.grad is None or not p.requires_grad or p is skip:
            continue
        if getattr(p, "tensor_model_parallel", False) or tp_rank == 0:
            sq += p.grad.double().pow(2).sum()
    if dist.is_initialized():
        dist.all_reduce(sq, group=ps.get_model_parallel_group())
    return math.sqrt(sq.item())


def clip_(model, max_norm: float) -> float:
    norm = grad_norm(model)
    if max_norm > 0 and norm > max_norm:
        coef = max_norm / (norm + 1e-6)
        for p in model.parameters():
            if p.grad is not None and p.requires_grad:
                p.grad.mul_(coef)
    return norm


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


# ---------------------------------------------------------------------------------------------------------
# Lightning pieces
# ---------------------------------------------------------------------------------------------------------
def _lightning():
    import lightning.pytorch as pl

    return pl


class VLMTrainingModule(_lightning().LightningModule):
    """Manual-optimisation LightningModule around one pipeline stage of an EcomVLM."""

    def __init__(self, model, opt: OptimConfig, max_steps: int, num_microbatches: int, seq_length: int,
                 micro_batch_size: int, use_te_packing: bool = False, autocast_dtype: torch.dtype | None = None,
                 engine: str = "lean", distributed_optimizer: bool = False, bf16_params: bool = False):
        super().__init__()
        if engine not in ("lean", "megatron"):
            raise ValueError(f"trainer.engine={engine!r}; choose lean or megatron")
        if distributed_optimizer and engine != "megatron":
            raise ValueError("trainer.distributed_optimizer=true needs trainer.engine=megatron")
        self.model = model
        self.engine, self.distributed_optimizer, self.bf16_params = engine, distributed_optimizer, bf16_params
        if engine == "megatron":
            from ecomvlm.recipes import megatron_engine

            self.ddp = megatron_engine.wrap(model, distributed_optimizer=distributed_optimizer, bf16=bf16_params)
        self.opt_cfg, self.max_steps = opt, max_steps
        self.num_microbatches, self.seq_length, self.micro_batch_size = num_microbatches, seq_length, micro_batch_size
        self.use_te_packing, self.autocast_dtype = use_te_packing, autocast_dtype
        self.automatic_optimization = False
        self.data_state: dict[str, int] | None = None  # data position after the last trained batch
        self.history: list[dict[str, float]] = []

    def configure_optimizers(self):
        if self.engine == "megatron":
            from ecomvlm.recipes import megatron_engine

            self.megatron_optimizer, self.megatron_scheduler = megatron_engine.build_optimizer(
                self.ddp, self.opt_cfg, bf16=self.bf16_params, distributed_optimizer=self.distributed_optimizer,
                max_steps=self.max_steps)
            # Lightning counts steps (global_step, max_steps, callbacks) by optimizer.step() calls; megatron's
            # optimizer is not a torch Optimizer, so a zero-lr stand-in over a private scalar is stepped with it
            self._step_counter = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
            return torch.optim.SGD([self._step_counter], lr=0.0)
        fused = torch.cuda.is_available()
        optimizer = torch.optim.AdamW(param_groups(self.model, self.opt_cfg), lr=self.opt_cfg.lr,
                                      betas=tuple(self.opt_cfg.betas), eps=self.opt_cfg.eps, fused=fused)
        return {"optimizer": optimizer, "lr_scheduler": make_scheduler(optimizer, self.opt_cfg, self.max_steps)}

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
        inner = model
        while hasattr(inner, "module"):  # megatron engine: DDP(Float16Module(EcomVLM))
            inner = inner.module
        pix = b["pixel_values"].to(dev) if (b["pixel_values"] is not None and inner.pre_process) else None
        grid = b["image_grid_thw"].to(dev) if b.get("image_grid_thw") is not None else None
        if pix is not None and (self.autocast_dtype is not None or self.bf16_params):
            pix = pix.to(self.autocast_dtype or torch.bfloat16)
        out = model(ids, pos, pixel_values=pix, image_grid_thw=grid, labels=labels, attention_mask=attn,
                    packed_seq_params=psp)

        def loss_func(per_token):
            loss_sum = (per_token.float() * mask).sum()
            n = mask.sum()
            return loss_sum, n.to(torch.int), {"loss_sum": loss_sum.detach(), "tokens": n.detach()}

        return out, loss_func

    def training_step(self, batch, batch_idx):
        import torch.distributed as dist
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        microbatches = batch["microbatches"]
        if ps.get_pipeline_model_parallel_world_size() > 1:  # one activation shape for the p2p exchange
            longest = max(mb["input_ids"].shape[1] for mb in microbatches)
            microbatches = [pad_microbatch(mb, longest) for mb in microbatches]
        self.data_state = {k: int(v) for k, v in batch["data_state"].items()}

        t0 = time.perf_counter()
        dev = next(self.model.parameters()).device
        n_tok = torch.tensor(float(sum(mb["loss_mask"].sum().item() for mb in microbatches)), device=dev)
        n_tok_local = n_tok.clone()
        n_real = torch.tensor(float(sum(mb["n_tokens"] for mb in microbatches)), device=dev)
        if dist.is_initialized() and ps.get_data_parallel_world_size() > 1:
            dist.all_reduce(n_tok, group=ps.get_data_parallel_group())
            dist.all_reduce(n_real, group=ps.get_data_parallel_group())
        if self.engine == "megatron":
            from ecomvlm.recipes import megatron_engine

            losses, norm, _ = megatron_engine.train_step(self, microbatches, self._forward_step, n_tok_local)
            self.optimizers().step()  # the step-counting stand-in (see configure_optimizers)
            lr = self.megatron_optimizer.param_groups[0]["lr"]
        else:
            optimizer = self.optimizers()
            scheduler = self.lr_schedulers()
            optimizer.zero_grad(set_to_none=True)
            ctx = (torch.autocast(device_type=dev.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                   else torch.autocast(device_type=dev.type, enabled=False))
            with ctx:
                losses = get_forward_backward_func()(
                    forward_step_func=self._forward_step, data_iterator=iter(microbatches), model=[self.model],
                    num_microbatches=len(microbatches), seq_length=microbatches[0]["input_ids"].shape[1],
                    micro_batch_size=microbatches[0]["input_ids"].shape[0], forward_only=False)
            finalize_grads(self.model, n_tok)
            norm = clip_(self.model, self.opt_cfg.clip_grad)
            optimizer.step()
            scheduler.step()
            lr = scheduler.get_last_lr()[0]
        # the loss lives on the last pipeline stage: share it with every rank for logging
        loss_sum = torch.tensor(sum(float(x["loss_sum"]) for x in losses) if ps.is_pipeline_last_stage() else 0.0,
                                device=dev)
        if dist.is_initialized():
            if ps.get_data_parallel_world_size() > 1:
                dist.all_reduce(loss_sum, group=ps.get_data_parallel_group())
            if ps.get_pipeline_model_parallel_world_size() > 1:
                dist.all_reduce(loss_sum, group=ps.get_pipeline_model_parallel_group())
        loss = (loss_sum / n_tok.clamp(min=1)).item()
        dt = time.perf_counter() - t0
        rec = {"loss": loss, "grad_norm": norm, "lr": lr, "tokens_per_s": n_real.item() / dt,
               "step_time_s": dt}
        self.history.append(rec)
        self.log_dict({f"train/{k}": v for k, v in rec.items()}, prog_bar=False, batch_size=1)
        self.log("loss", loss, prog_bar=True, batch_size=1, logger=False)
        return None


class GlobalBatches(torch.utils.data.IterableDataset):
    """Groups the DataModule's micro-batches into lists of `num_microbatches` (one Lightning step each)."""

    def __init__(self, datamodule, num_microbatches: int) -> None:
        self.dm, self.n = datamodule, num_microbatches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it = self.dm.batches()
        while True:
            micro = [next(it) for _ in range(self.n)]
            # the data position *after* this batch: what a checkpoint taken after this step must record
            # (Lightning prefetches the next batch, so the DataModule's live position is one batch ahead)
            yield {"microbatches": micro, "data_state": dict(self.dm.state_dict())}


def run_dir_for(cfg_run: dict[str, Any]) -> Path:
    return Path(cfg_run["dir"])


def save_config(run_dir: Path, cfg: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")
