"""Our Hydra config (:class:`~ecomvlm.recipes.config.AutoModelTrainConfig`) -> the config NeMo AutoModel's VLM
fine-tuning recipe takes. Our config is the single source: nothing here has a default of its own that a user
could not see in recipes/config.py or recipes/automodel/schema.py; AutoModel's YAML is never written by hand.

Mapping (ours -> AutoModel 0.7.0):

=========================================  ========================================================================
``model.hf_path`` (or ``init.from_...``)   ``model.pretrained_model_name_or_path`` of
                                           ``NeMoAutoModelForImageTextToText.from_pretrained`` (+ trust_remote_code,
                                           force_hf, attn_implementation)
``precision``                              bf16: fp32 master weights (``torch_dtype: float32``) + FSDP2
                                           ``MixedPrecisionPolicy(param=bf16, reduce=fp32)``; fp32: fp32 throughout
``parallel``                               ``distributed``: fsdp2, ``tp_size``, ``cp_size``, ``sequence_parallel``;
                                           FSDP2 shards over world / (TP x CP) (``dp_size: None``)
``automodel.*``                            activation checkpointing, HSDP replicas, checkpoint retention, loss
``data.*``                                 our dataset + collate (recipes/automodel/data.py);
                                           ``step_scheduler.local_batch_size`` = micro_batch_size,
                                           ``global_batch_size`` (gradient accumulation = gbs / (mbs x dp))
``trainer.max_steps/save_every``           ``step_scheduler.max_steps/ckpt_every_steps`` (no per-epoch saves)
``optim``                                  ``torch.optim.AdamW`` + ``lr_scheduler`` (linear warmup, cosine to
                                           min_lr over max_steps), ``clip_grad_norm.max_norm``;
                                           ``vision_lr_mult`` -> a parameter group override on the vision tower
``recipe.train``                           ``freeze_config`` (module globs of ``model.parts``)
``peft``                                   ``peft: PeftConfig`` (LoRA)
``run.seed`` / ``run.dir``                 ``seed`` / ``checkpoint.checkpoint_dir`` = ``run.dir/checkpoints``
=========================================  ========================================================================
"""

from __future__ import annotations

import fnmatch
from typing import Any

PARTS = ("encoder", "projector", "decoder")


class LayoutError(ValueError):
    """An impossible AutoModel layout (sizes vs world size and model dims); the message lists every problem."""


def check_layout(cfg, world_size: int) -> dict[str, int]:
    """Layout and batch checks before anything is built. Returns the FSDP data-parallel size and accumulation."""
    p, m, d = cfg.parallel, cfg.model, cfg.data
    tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
    problems: list[str] = []
    if pp != 1:
        problems.append(f"parallel.pipeline_model_parallel_size={pp}: the automodel backend runs FSDP2 (+TP/CP) "
                        f"without pipeline stages; use parallel=single or tp2/tp4/tp8")
    if world_size % (tp * cp):
        problems.append(f"world size {world_size} is not divisible by TP*CP = {tp}*{cp}")
    for name, n in (("num_attention_heads", m.num_attention_heads), ("num_key_value_heads", m.num_key_value_heads)):
        if n is not None and n % tp:
            problems.append(f"model.{name}={n} is not divisible by TP={tp}")
    if p.sequence_parallel and tp == 1:
        problems.append("parallel.sequence_parallel=true needs TP > 1")
    dp = max(1, world_size // (tp * cp))
    rep = cfg.automodel.dp_replicate_size
    if rep is not None and (rep < 1 or dp % rep):
        problems.append(f"automodel.dp_replicate_size={rep} must divide the data-parallel size {dp}")
    if d.global_batch_size % (d.micro_batch_size * dp):
        problems.append(f"data.global_batch_size={d.global_batch_size} is not a multiple of micro_batch_size x "
                        f"data-parallel size = {d.micro_batch_size} x {dp}")
    if d.pack:
        problems.append("data.pack=true: the automodel backend does not pack samples (set data.pack=false)")
    if cfg.precision.fp8 is not None:
        problems.append("precision.fp8: the automodel backend runs bf16 or fp32 (use precision=bf16)")
    if cfg.trainer.distributed_optimizer:
        problems.append("trainer.distributed_optimizer: FSDP2 already shards the optimizer state; leave it false")
    unknown = sorted(set(cfg.recipe.train) - set(PARTS))
    if unknown:
        problems.append(f"recipe.train has unknown parts {unknown}; choose from {list(PARTS)}")
    if cfg.data.over_budget not in ("auto", "drop_images"):
        problems.append(f"data.over_budget={cfg.data.over_budget}: complete VLMs' processors fix each image's "
                        f"tokens, so only drop_images (auto) applies")
    if problems:
        raise LayoutError("impossible automodel layout: " + "; ".join(problems))
    return {"dp": dp, "grad_acc": d.global_batch_size // (d.micro_batch_size * dp), "tp": tp, "cp": cp}


def _glob_regex(glob: str) -> str:
    """A module-path glob as a regex over parameter names (the module and everything below it)."""
    return r"(^|\.)" + fnmatch.translate(glob.lstrip("*.")).removeprefix("(?s:").removesuffix(")\\Z") + r"\."


def freeze_config(cfg) -> dict[str, Any] | None:
    """``recipe.train`` -> AutoModel's freeze_config; None when everything trains (nothing frozen)."""
    train = set(cfg.recipe.train)
    parts = cfg.model.parts
    frozen = [g for part in PARTS if part not in train for g in getattr(parts, part)]
    if not frozen:
        return None
    trained = [g for part in PARTS if part in train for g in getattr(parts, part)]
    out: dict[str, Any] = {"freeze_vision_tower": False, "freeze_modules": [{"glob": g} for g in frozen]}
    if trained:
        out["unfreeze_modules"] = [{"glob": g} for g in trained]
    return out


def param_groups(cfg) -> list[dict[str, Any]]:
    """``optim.vision_lr_mult`` as AutoModel parameter-group overrides: the projector keeps the full rate even where
    it sits inside the vision module (Qwen's merger), the rest of the vision tower runs at ``lr x mult``."""
    mult = cfg.optim.vision_lr_mult
    if mult == 1.0 or not cfg.model.parts.encoder:
        return []
    out = [{"pattern": _glob_regex(g), "lr_mult": 1.0} for g in cfg.model.parts.projector]
    out += [{"pattern": _glob_regex(g), "lr_mult": mult} for g in cfg.model.parts.encoder]
    return out


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    for k in path:
        d = d.setdefault(k, {})
    d[last] = value


def automodel_config(cfg, *, world_size: int, model_path: str, checkpoint_dir: str, dataset: Any, collate: Any,
                     cuda: bool) -> dict[str, Any]:
    """The AutoModel config of this run, as the plain dict ``ConfigNode`` wraps (import paths, no objects: AutoModel
    saves it as YAML with every checkpoint). ``dataset`` / ``collate`` are the ``dataset`` and
    ``dataloader.collate_fn`` sections (``_target_`` + this run's keyword arguments)."""
    layout = check_layout(cfg, world_size)
    m, o, t, a = cfg.model, cfg.optim, cfg.trainer, cfg.automodel
    bf16 = cfg.precision.params_dtype == "bf16"
    if cfg.precision.params_dtype not in ("bf16", "fp32"):
        raise LayoutError(f"precision.params_dtype={cfg.precision.params_dtype}: choose bf16 or fp32")
    model: dict[str, Any] = {
        "_target_": "nemo_automodel.NeMoAutoModelForImageTextToText.from_pretrained",
        "pretrained_model_name_or_path": model_path,
        "torch_dtype": "torch.float32",  # master weights; FSDP2 computes in bf16 (mp_policy) for precision=bf16
        "attn_implementation": m.attn_implementation,
        "trust_remote_code": m.trust_remote_code,
        "use_liger_kernel": bool(cuda),
        "use_sdpa_patching": bool(cuda),
    }
    if m.force_hf:
        model["force_hf"] = True
    distributed: dict[str, Any] = {
        "strategy": "fsdp2", "dp_size": None, "dp_replicate_size": a.dp_replicate_size,
        "tp_size": layout["tp"], "cp_size": layout["cp"],
        "sequence_parallel": cfg.parallel.sequence_parallel,
        "activation_checkpointing": a.activation_checkpointing,
        "mp_policy": {"_target_": "torch.distributed.fsdp.MixedPrecisionPolicy",
                      "param_dtype": "bfloat16" if bf16 else "float32", "reduce_dtype": "float32",
                      "output_dtype": None, "cast_forward_inputs": False},
    }
    loss = ("nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy" if a.loss == "masked_ce"
            else "nemo_automodel.components.loss.chunked_ce.ChunkedCrossEntropy")
    optimizer: dict[str, Any] = {"_target_": "torch.optim.AdamW", "lr": o.lr, "betas": list(o.betas), "eps": o.eps,
                                 "weight_decay": o.weight_decay}
    groups = param_groups(cfg)
    if groups:
        optimizer["param_group_overrides"] = groups
    out: dict[str, Any] = {
        "seed": cfg.run.seed,
        "step_scheduler": {
            "global_batch_size": cfg.data.global_batch_size, "local_batch_size": cfg.data.micro_batch_size,
            "max_steps": t.max_steps, "ckpt_every_steps": t.save_every, "save_checkpoint_every_epoch": False,
            "val_every_steps": None, "log_remote_every_steps": max(1, t.log_every),
            "preemption_signal": ["SIGTERM", "SIGUSR1"],
        },
        "dist_env": {"backend": "nccl" if cuda else "gloo", "timeout_minutes": a.dist_timeout_minutes},
        "model": model,
        "distributed": distributed,
        "loss_fn": {"_target_": loss},
        "dataset": dict(dataset),
        "dataloader": {"collate_fn": dict(collate), "shuffle": True,
                       "num_workers": cfg.data.num_workers, "drop_last": True,
                       **({"persistent_workers": False} if cfg.data.num_workers else {})},
        "optimizer": optimizer,
        "lr_scheduler": {"lr_warmup_steps": min(o.warmup_steps, max(0, t.max_steps - 1)),
                         "lr_decay_steps": t.max_steps, "lr_decay_style": "cosine",
                         "min_lr": o.min_lr, "max_lr": o.lr, "init_lr": 0.0},
        "clip_grad_norm": {"max_norm": o.clip_grad},  # fused kernel on CUDA grads, torch otherwise
        "checkpoint": {
            "enabled": True, "checkpoint_dir": checkpoint_dir, "model_save_format": "safetensors",
            "save_consolidated": a.save_consolidated, "max_recent_checkpoints": a.max_recent_checkpoints,
        },
    }
    fc = freeze_config(cfg)
    if fc is not None:
        out["freeze_config"] = fc
    if cfg.peft.method == "lora":
        p = cfg.peft
        peft: dict[str, Any] = {"_target_": "nemo_automodel.components._peft.lora.PeftConfig", "dim": p.dim,
                                "alpha": p.alpha, "dropout": p.dropout, "use_triton": bool(cuda)}
        if p.target_modules:
            peft["target_modules"] = list(p.target_modules)
        else:
            peft["exclude_modules"] = list(p.exclude_modules)
        out["peft"] = peft
    for key, value in a.extra.items():
        _set_dotted(out, key, value)
    return out


def plan(cfg, nproc: int) -> str:
    """``ecomvlm train ... --dry-run`` for an AutoModel recipe: the layout, the translation, a memory estimate."""
    layout = check_layout(cfg, nproc)
    m = cfg.model
    lines = [f"# automodel backend: {m.name} ({m.family}{', ' + m.hub_id if m.hub_id else ''}) from "
             f"{m.hf_path}",
             f"# {nproc} process(es): FSDP2 data-parallel {layout['dp']} x TP {layout['tp']} x CP {layout['cp']}, "
             f"{layout['grad_acc']} micro-batch(es) of {cfg.data.micro_batch_size} per step, "
             f"{'LoRA' if cfg.peft.method == 'lora' else 'full fine-tune'}, trains {list(cfg.recipe.train)}"]
    if m.params_b and cfg.peft.method == "none":
        # fp32 master weights + fp32 grads + 2 fp32 Adam moments, sharded over every rank (FSDP2 x TP)
        per_gpu = m.params_b * 16 / nproc
        lines.append(f"# ~{per_gpu:.0f} GB/GPU of weights, gradients and Adam state before activations "
                     f"({m.params_b:g}B params x 16 bytes / {nproc})")
    if m.geometry:
        from ecomvlm.recipes.automodel.geometry import image_tokens

        lines.append(f"# published geometry: {m.num_layers} layers, {m.num_attention_heads} heads / "
                     f"{m.num_key_value_heads} KV heads, <= {image_tokens(m)} tokens per image"
                     f"{' (+ as many per pan & scan crop)' if m.processor.pan_and_scan else ''}; data: <= "
                     f"{cfg.data.max_images} images, {cfg.data.max_seq_length} tokens per sample")
    kw = m.processor.call_kwargs()
    if kw:
        lines.append(f"# processor kwargs (training and eval): {kw}")
    lines.append("# nothing trained")
    return "\n".join(lines)


