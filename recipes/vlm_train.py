"""Train one stage of an encoder x decoder VLM. A Hydra app; every stage recipe is a config of this file.

    # the named recipes in conf/ (header comments give their commands), e.g.
    torchrun --nproc-per-node 8 -m ecomvlm.recipes.vlm_train --config-name siglip2_qwen3_8b_stage3_sft \
        tokenizer.path=/ckpt/Qwen3-8B data.shards=/data/stage3_shards
    # or through the door:
    ecomvlm train tiny_siglip_qwen3_stage1_alignment tokenizer.path=... data.shards=... trainer.max_steps=20

Config precedence (lowest -> highest): conf/train.yaml < conf/recipe/<stage>.yaml < the named recipe file <
key=value overrides on the command line.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("ecomvlm.train")


def _container(cfg) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ValueError(f"missing required settings: {missing}; pass them as key=value overrides")
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def run(cfg) -> dict[str, Any]:
    """Run a training stage. Returns a summary (losses per step, checkpoint paths)."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.strategies import SingleDeviceStrategy
    from megatron.core import parallel_state as ps
    from transformers import AutoTokenizer

    from ecomvlm.data_modules.loader import LoaderConfig, VLMDataModule
    from ecomvlm.data_modules.preprocess import ImageSpec
    from ecomvlm.recipes import checkpointing as ckpt
    from ecomvlm.recipes.models.parallel import init_distributed
    from ecomvlm.recipes.models.registry import parallel_from_cfg, precision_from_cfg, vlm_config_from_cfg
    from ecomvlm.recipes.models.vlm import build_vlm
    from ecomvlm.recipes.training import (
        GlobalBatches, OptimConfig, VLMTrainingModule, apply_freezing, save_config,
    )

    c = _container(cfg)
    parallel, prec = parallel_from_cfg(c["parallel"]), precision_from_cfg(c["precision"])
    info = init_distributed(parallel, seed=int(c["run"]["seed"]))
    rank0 = info["rank"] == 0
    run_dir = Path(c["run"]["dir"])
    if rank0:
        save_config(run_dir, c)

    tok_path = Path(c["tokenizer"]["path"])
    if not tok_path.is_dir():
        raise FileNotFoundError(f"tokenizer.path={tok_path} is not a directory (an HF tokenizer folder)")
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer at {tok_path} has no '<image>' token; add it as a special token")
    tp = parallel.tensor_model_parallel_size
    vlm_cfg = vlm_config_from_cfg(c["model"], tp=tp, image_token_id=image_token_id)
    if len(tokenizer) > vlm_cfg.decoder.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but model.decoder.vocab_size is "
                         f"{vlm_cfg.decoder.vocab_size}")
    chat_format = c["model"]["decoder"].get("chat_format") or vlm_cfg.decoder.family

    # ---- model (+ precision) --------------------------------------------------------------------------
    t = c["trainer"]
    engine, zero = str(t.get("engine", "lean")), bool(t.get("distributed_optimizer", False))
    overrides = {"calculate_per_token_loss": True, **prec.transformer_overrides()}
    params_dtype, autocast = torch.float32, (prec.dtype if prec.dtype != torch.float32 else None)
    if engine == "megatron":  # bf16 parameters + fp32 master weights in megatron's optimizer, no autocast
        from ecomvlm.recipes import megatron_engine

        bf16 = prec.dtype == torch.bfloat16
        overrides.update(megatron_engine.model_overrides(bf16))
        params_dtype, autocast = (torch.bfloat16, None) if bf16 else (torch.float32, autocast)
    torch.manual_seed(int(c["run"]["seed"]))
    model = build_vlm(vlm_cfg, parallel, params_dtype=params_dtype, config_overrides=overrides).to(info["device"])

    # ---- where the weights come from ------------------------------------------------------------------
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    start_step, resume_state = 0, None
    if latest is not None:
        meta = ckpt.load_checkpoint(model, latest)
        start_step, resume_state = int(meta["step"]), (latest, meta)
        source = f"resumed {latest}"
    elif c["init"].get("from_checkpoint"):
        src = Path(c["init"]["from_checkpoint"])
        if not (src / "meta.json").is_file() and (src / "checkpoints").is_dir():  # a run dir: take its latest
            src = ckpt.latest_checkpoint(src / "checkpoints") or src
        ckpt.load_checkpoint(model, src)
        source = f"checkpoint {src}"
    elif c["init"].get("hf_llava") or c["init"].get("hf_decoder"):
        from ecomvlm.recipes.models.hf_io import load_hf_into

        left = load_hf_into(model, llava_path=c["init"].get("hf_llava"), decoder_path=c["init"].get("hf_decoder"),
                            encoder_path=c["init"].get("hf_encoder"))
        source = f"HF weights ({len(left)} tensors left at init: {sorted({n.split('.')[0] for n in left})})"
    else:
        source = "random init"
    counts = apply_freezing(model, list(c["recipe"]["train"]))
    if rank0:
        log.info("model %s: %s; trainable %d, frozen %d params (this rank)", vlm_cfg.name, source,
                 counts["trainable"], counts["frozen"])

    # ---- data ------------------------------------------------------------------------------------------
    d = c["data"]
    dp = info["dp_size"]
    mbs, gbs = int(d["micro_batch_size"]), int(d["global_batch_size"])
    if gbs % (mbs * dp):
        raise ValueError(f"data.global_batch_size={gbs} must be a multiple of micro_batch_size x data-parallel size "
                         f"= {mbs} x {dp}")
    num_micro = gbs // (mbs * dp)
    # Transformer Engine's causal attention ignores dense masks: packed rows go to it as THD sequences
    # (cu_seqlens), which megatron supports for micro-batch 1 (Gemma3 uses local layers and the mask path)
    from ecomvlm.recipes.models.decoder import te_available

    te_packing = bool(d["pack"]) and te_available() and vlm_cfg.decoder.family != "gemma3"
    if te_packing and mbs != 1:
        raise ValueError(f"data.pack=true with Transformer Engine layers needs data.micro_batch_size=1 (got {mbs}): "
                         f"packed rows are passed to TE as THD sequences; raise global_batch_size instead")
    loader_cfg = LoaderConfig(shards=d["shards"], micro_batch_size=mbs, max_seq_length=int(d["max_seq_length"]),
                              pack=bool(d["pack"]), pack_window=int(d["pack_window"]),
                              shuffle_buffer=int(d["shuffle_buffer"]), seed=int(c["run"]["seed"]),
                              num_workers=int(d["num_workers"]), truncation=d["truncation"],
                              max_images=int(d["max_images"]), max_image_tokens=d.get("max_image_tokens"),
                              pad_to_multiple_of=prec.pad_to_multiple)
    dm = VLMDataModule(loader_cfg, tokenizer, chat_format, ImageSpec.from_encoder(vlm_cfg.encoder), image_token_id,
                       rank=info["dp_rank"], world_size=dp)

    # ---- optimisation ----------------------------------------------------------------------------------
    max_steps = int(t["max_steps"])
    o = c["optim"]
    opt = OptimConfig(lr=float(o["lr"]), min_lr=float(o["min_lr"]), vision_lr_mult=float(o["vision_lr_mult"]),
                      weight_decay=float(o["weight_decay"]), betas=tuple(o["betas"]), eps=float(o["eps"]),
                      warmup_steps=int(o["warmup_steps"]), clip_grad=float(o["clip_grad"]))
    module = VLMTrainingModule(model, opt, max_steps, num_micro, int(d["max_seq_length"]), mbs,
                               use_te_packing=te_packing, autocast_dtype=autocast, engine=engine,
                               distributed_optimizer=zero, bf16_params=params_dtype == torch.bfloat16)
    if resume_state is not None:
        dm.load_state_dict(resume_state[1]["data"])

    class Checkpointer(pl.Callback):
        """Saves model + optimizer + scheduler + data position + RNG every save_every steps (collective)."""

        def __init__(self):
            self.saved: list[str] = []

        def on_train_start(self, trainer, pl_module):
            if resume_state is not None:  # optimizer/scheduler exist now: restore them
                _restore_training_state(resume_state[0], trainer, info["rank"], module)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = start_step + trainer.global_step
            if step % int(t["save_every"]) == 0 or step == max_steps:
                self.saved.append(str(_save(step, trainer)))
            if t.get("fail_at_step") is not None and step == int(t["fail_at_step"]):
                log.error("trainer.fail_at_step=%s: exiting hard to simulate a killed job", step)
                _kill_job()

    def _save(step: int, trainer) -> Path:
        tmp = ckpt.save_checkpoint(model, run_dir / "checkpoints" / f"step_{step:08d}", step=step,
                                   tokenizer=tokenizer, parallel=parallel,
                                   extra={"data": module.data_state, "stage": c["recipe"]["stage"]})
        if module.engine == "megatron":
            from ecomvlm.recipes import megatron_engine

            state = megatron_engine.state_dict(module, tmp)
        else:
            state = {"optimizer": trainer.optimizers[0].state_dict(),
                     "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict()}
        state |= {"rng_cpu": torch.get_rng_state(), "python_rng": random.getstate()[1],
                 "rng_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
        (tmp / "optimizer").mkdir(exist_ok=True)
        torch.save(state, tmp / "optimizer" / f"rank_{info['rank']:05d}.pt")
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        return ckpt.finalize_checkpoint(tmp)

    checkpointer = Checkpointer()
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="") if rank0 else False
    trainer = pl.Trainer(
        strategy=SingleDeviceStrategy(device=info["device"]), max_steps=max_steps - start_step,
        logger=logger, callbacks=[checkpointer], enable_checkpointing=False, use_distributed_sampler=False,
        enable_progress_bar=rank0 and sys.stderr.isatty(), enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=int(t["log_every"]), limit_val_batches=0,
    )
    if start_step >= max_steps:
        log.info("run already finished (step %d of %d)", start_step, max_steps)
    else:
        loader = torch.utils.data.DataLoader(GlobalBatches(dm, num_micro), batch_size=None, num_workers=0)
        trainer.fit(module, train_dataloaders=loader)
    summary = {"start_step": start_step, "losses": [h["loss"] for h in module.history],
               "tokens_per_s": [h["tokens_per_s"] for h in module.history], "checkpoints": checkpointer.saved,
               "init": source, "data_stats": dm.stats, "run_dir": str(run_dir)}
    if module.engine == "megatron" and hasattr(module, "megatron_optimizer"):
        from ecomvlm.recipes import megatron_engine

        summary["engine"] = megatron_engine.describe(module)
    else:
        summary["engine"] = {"engine": "lean", "param_dtype": str(next(model.parameters()).dtype),
                             "autocast": str(autocast)}
    final = ckpt.latest_checkpoint(run_dir / "checkpoints")
    summary["final_checkpoint"] = str(final) if final else None
    if c.get("export", {}).get("hf_dir") and info["world_size"] == 1:
        from ecomvlm.recipes.models.convert import gather_full_state
        from ecomvlm.recipes.models.hf_io import export_llava_hf

        summary["hf_dir"] = str(export_llava_hf(gather_full_state(model), vlm_cfg, tokenizer, c["export"]["hf_dir"],
                                                dtype=torch.float32))
    if rank0:
        import json

        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if ps.model_parallel_is_initialized():
        torch.distributed.barrier()
    return summary


def _kill_job() -> None:
    """Die like a job killed by the scheduler: the whole process tree, no cleanup, no final checkpoint."""
    import psutil

    sys.stdout.flush()
    sys.stderr.flush()
    for child in psutil.Process().children(recursive=True):  # e.g. the checkpoint writer's helper process
        child.kill()
    os._exit(17)


def _restore_training_state(ckpt_dir: Path, trainer, rank: int, module) -> None:
    path = Path(ckpt_dir) / "optimizer" / f"rank_{rank:05d}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: resume needs the same number of ranks and layout as the save "
                                f"(model-only loading at another TP/PP: init.from_checkpoint)")
    state = torch.load(path, weights_only=True)
    if module.engine == "megatron":
        from ecomvlm.recipes import megatron_engine

        megatron_engine.load_state_dict(module, state, ckpt_dir)
    else:
        trainer.optimizers[0].load_state_dict(state["optimizer"])
        trainer.lr_scheduler_configs[0].scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    random.setstate((3, tuple(state["python_rng"]), None))
    if state.get("rng_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng_cuda"])


def main() -> None:
    from nemo.core.config import hydra_runner

    @hydra_runner(config_path="pkg://ecomvlm.conf", config_name="train")
    def _app(cfg) -> None:
        run(cfg)

    _app()


if __name__ == "__main__":
    main()
