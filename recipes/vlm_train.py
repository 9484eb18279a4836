"""Train one stage of an encoder x decoder VLM. A Hydra app; every stage recipe in conf/ is a config of this file.

    ecomvlm train siglip2_qwen3_8b_stage3_sft --nproc 8 tokenizer.path=TOKENIZER_DIR data.shards=SHARDS_DIR \
        init.from_checkpoint=PREVIOUS_STAGE_RUN
    # the same, as the Hydra app under torchrun:
    torchrun --nproc-per-node 8 -m ecomvlm.recipes.vlm_train --config-name siglip2_qwen3_8b_stage3_sft \
        tokenizer.path=TOKENIZER_DIR data.shards=SHARDS_DIR init.from_checkpoint=PREVIOUS_STAGE_RUN

:class:`VLMTrainingRecipe` runs in named phases: ``setup_model`` (build this rank's stage, take weights from the
run's last checkpoint, the previous stage or HF, freeze), ``setup_data``, ``setup_optimizer``, ``train`` and
``cleanup``. Config precedence: recipes/config.py.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

import torch

from ecomvlm.recipes.config import TrainConfig, as_dict, to_config

log = logging.getLogger("ecomvlm.train")


# settings a resumed run may change (how long, how often it logs/saves, what it exports, notes); everything else
# defines the run and must match its config.json
RESUME_FREE = ("trainer.max_steps", "trainer.log_every", "trainer.save_every", "trainer.wandb", "export", "run.note",
               "init", "data.loader_watchdog_s")


def settings_differences(saved: Any, now: Any, free: tuple[str, ...], prefix: str = "") -> list[tuple[str, Any, Any]]:
    if prefix.rstrip(".") in free:
        return []
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for k in sorted(set(saved) | set(now))
                for d in settings_differences(saved.get(k), now.get(k), free, f"{prefix}{k}.")]
    return [] if saved == now else [(prefix.rstrip("."), saved, now)]


def check_resumable(cfg: Any, run_dir: Path, step: int, new_run_hint: str) -> None:
    """A run directory (either backend) is resumed only to go on with the run it holds: steps left, the settings of
    its config.json (but for RESUME_FREE)."""
    if step >= cfg.trainer.max_steps:
        raise ValueError(f"run {run_dir} already finished (step {step} of trainer.max_steps="
                         f"{cfg.trainer.max_steps}): raise trainer.max_steps to train on, or choose another "
                         f"run.dir (init.from_checkpoint={run_dir} {new_run_hint})")
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return
    diffs = [f"{key}: {a!r} (saved) -> {b!r} (now)" for key, a, b in
             settings_differences(json.loads(saved_path.read_text()), as_dict(cfg), RESUME_FREE)]
    if diffs:
        raise ValueError(f"run {run_dir} was started with other settings ({'; '.join(diffs[:6])}): resume "
                         f"with the saved ones, or start a new run.dir with init.from_checkpoint={run_dir}")


class VLMTrainingRecipe:
    def __init__(self, cfg: TrainConfig, callbacks: list | None = None) -> None:
        self.cfg = to_config(cfg)
        self.extra_callbacks = list(callbacks or [])

    # ---- setup -----------------------------------------------------------------------------------------
    def setup(self) -> "VLMTrainingRecipe":
        from ecomvlm.recipes import wandb_logging
        from ecomvlm.recipes.models.parallel import init_distributed

        c = self.cfg
        wandb_logging.check(c.trainer.wandb)
        self.info = init_distributed(c.parallel, seed=c.run.seed)
        self.rank0 = self.info["rank"] == 0
        self.run_dir = Path(c.run.dir)
        self.setup_tokenizer()
        self.setup_model()
        self.setup_data()
        self.setup_optimizer()
        return self

    def setup_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN

        path = Path(self.cfg.tokenizer.path)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer.path={path} is not a directory (an HF tokenizer folder)")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.image_token_id is None or self.image_token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer at {path} has no {IMAGE_TOKEN!r} token; add it as a special token")

    def setup_model(self) -> None:
        from ecomvlm.recipes import checkpointing as ckpt
        from ecomvlm.recipes.engine import apply_freezing
        from ecomvlm.recipes.models.registry import resolve
        from ecomvlm.recipes.models.vlm import build_vlm

        c = self.cfg
        self.vlm_cfg = resolve(c.model, tp=c.parallel.tensor_model_parallel_size, image_token_id=self.image_token_id)
        vocab = self.vlm_cfg.decoder.vocab_size
        if len(self.tokenizer) > vocab:
            raise ValueError(f"tokenizer has {len(self.tokenizer)} tokens but model.decoder.vocab_size is {vocab}")
        self.bf16 = c.precision.dtype == torch.bfloat16
        overrides = {"calculate_per_token_loss": True, **c.precision.transformer_overrides(c.model.decoder)}
        torch.manual_seed(c.run.seed)
        self.model = build_vlm(self.vlm_cfg, c.parallel, params_dtype=c.precision.dtype,
                               config_overrides=overrides).to(self.info["device"])
        self.latest = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
        self.start_step, self.resume_meta = 0, None
        if self.latest is not None:
            self.check_resumable(int(ckpt.read_meta(self.latest)["step"]))
            self.resume_meta = ckpt.load_checkpoint(self.model, self.latest)
            if self.resume_meta.get("migrated_from"):
                raise ValueError(f"{self.latest} is a {self.resume_meta['migrated_from']} checkpoint, whose optimizer "
                                 f"state and data position the current engine cannot resume; start a new run from "
                                 f"its weights: init.from_checkpoint={self.latest} with another run.dir")
            self.start_step = int(self.resume_meta["step"])
            self.source = f"resumed {self.latest}"
        elif c.init.from_checkpoint:
            src = ckpt.resolve_checkpoint(c.init.from_checkpoint)
            ckpt.load_checkpoint(self.model, src)
            self.source = f"checkpoint {src}"
        elif c.init.hf_llava or c.init.hf_decoder:
            from ecomvlm.recipes.models.hf_io import load_hf_into

            left = load_hf_into(self.model, llava_path=c.init.hf_llava, decoder_path=c.init.hf_decoder,
                                encoder_path=c.init.hf_encoder)
            self.source = f"HF weights ({len(left)} tensors left at init: {sorted({n.split('.')[0] for n in left})})"
        else:
            self.source = "random init"
        counts = apply_freezing(self.model, list(c.recipe.train))
        if self.rank0:
            log.info("model %s: %s; trainable %d, frozen %d params (this rank)", self.vlm_cfg.name, self.source,
                     counts["trainable"], counts["frozen"])

    def check_resumable(self, step: int) -> None:
        check_resumable(self.cfg, Path(self.run_dir), step, "starts a new stage from it")

    def setup_data(self) -> None:
        from ecomvlm.data_modules.loader import VLMDataModule

        c, d = self.cfg, self.cfg.data
        dp = self.info["dp_size"]
        if d.global_batch_size % (d.micro_batch_size * dp):
            raise ValueError(f"data.global_batch_size={d.global_batch_size} must be a multiple of micro_batch_size x "
                             f"data-parallel size = {d.micro_batch_size} x {dp}")
        self.num_micro = d.global_batch_size // (d.micro_batch_size * dp)
        # Transformer Engine's causal attention ignores dense masks: packed rows go to it as THD sequences
        # (cu_seqlens), which megatron supports for micro-batch 1
        self.te_packing = d.pack and self.vlm_cfg.decoder.uses_te
        if self.te_packing and d.micro_batch_size != 1:
            raise ValueError(f"data.pack=true with Transformer Engine layers needs data.micro_batch_size=1 (got "
                             f"{d.micro_batch_size}): packed rows are passed to TE as THD sequences; raise "
                             f"global_batch_size instead")
        self.datamodule = VLMDataModule(d, self.tokenizer, self.vlm_cfg.decoder.chat_format,
                                        self.vlm_cfg.encoder.image_spec(), self.image_token_id,
                                        rank=self.info["dp_rank"], world_size=dp, seed=c.run.seed,
                                        pad_to_multiple_of=c.precision.pad_to_multiple(c.parallel))
        if self.resume_meta is not None:
            from ecomvlm.data_modules.loader import load_data_state

            path = self.latest / "data" / f"rank_{self.info['rank']:05d}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing: {self.latest} holds no data position for rank "
                                        f"{self.info['rank']} (saved by another layout or an older ecomvlm, whose "
                                        f"positions were not exact); start a new run from its weights with "
                                        f"init.from_checkpoint={self.latest}")
            self.datamodule.load_state_dict(load_data_state(path))

    def setup_optimizer(self) -> None:
        from ecomvlm.recipes.engine import VLMTrainingModule

        t = self.cfg.trainer
        self.module = VLMTrainingModule(self.model, self.cfg.optim, max_steps=t.max_steps, start_step=self.start_step,
                                        distributed_optimizer=t.distributed_optimizer, bf16=self.bf16,
                                        use_te_packing=self.te_packing, log_every=t.log_every)
        self.module.data_counts = lambda: self.datamodule.stats

    # ---- checkpoints -----------------------------------------------------------------------------------
    def save(self, step: int) -> Path:
        from ecomvlm.recipes import checkpointing as ckpt

        tmp = ckpt.save_checkpoint(self.model, self.run_dir / "checkpoints" / f"step_{step:08d}", step=step,
                                   tokenizer=self.tokenizer, parallel=self.cfg.parallel,
                                   extra={"stage": self.cfg.recipe.stage})
        from ecomvlm.data_modules.loader import save_data_state

        (tmp / "data").mkdir(exist_ok=True)
        save_data_state(self.datamodule.state_dict(), tmp / "data" / f"rank_{self.info['rank']:05d}.pt")
        state = self.module.optimizer_state(tmp) | {
            "rng_cpu": torch.get_rng_state(), "python_rng": random.getstate()[1],
            "rng_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
        (tmp / "optimizer").mkdir(exist_ok=True)
        torch.save(state, tmp / "optimizer" / f"rank_{self.info['rank']:05d}.pt")
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        return ckpt.finalize_checkpoint(tmp)

    def restore_training_state(self) -> None:
        """Optimizer, scheduler and RNG of the checkpoint being resumed (the optimizer exists only now)."""
        path = self.latest / "optimizer" / f"rank_{self.info['rank']:05d}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: resume needs the same number of ranks and layout as the save "
                                    f"(model-only loading at another TP/PP: init.from_checkpoint)")
        state = torch.load(path, weights_only=True)
        self.module.load_optimizer_state(state, self.latest)
        torch.set_rng_state(state["rng_cpu"])
        random.setstate((3, tuple(state["python_rng"]), None))
        if state.get("rng_cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["rng_cuda"])

    # ---- train -----------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        import lightning.pytorch as pl
        from lightning.pytorch.loggers import TensorBoardLogger
        from lightning.pytorch.plugins.environments import SLURMEnvironment
        from lightning.pytorch.strategies import SingleDeviceStrategy

        from ecomvlm.recipes.checkpointing import CheckpointCallback
        from ecomvlm.recipes.engine import GlobalBatches

        c, t = self.cfg, self.cfg.trainer
        self.checkpointer = CheckpointCallback(self.save, lambda: self.module.step, every=t.save_every,
                                               max_steps=t.max_steps)
        if self.rank0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(as_dict(c), indent=2, default=str) + "\n")
        recipe = self

        class RestoreState(pl.Callback):
            def on_train_start(self, trainer, pl_module):
                if recipe.resume_meta is not None:
                    recipe.restore_training_state()

        logger: list | bool = False
        if self.rank0:
            logger = [TensorBoardLogger(save_dir=str(self.run_dir), name="tb", version="")]
            if t.wandb.enabled:
                from ecomvlm.recipes import wandb_logging

                logger.append(wandb_logging.lightning_logger(t.wandb, self.run_dir, c.run.name, as_dict(c)))
        # under SLURM, Lightning would requeue the job itself on SIGUSR1 (from every rank: each thinks it is rank 0
        # on a single-device strategy) and swallow SIGTERM; the CheckpointCallback handles both signals instead
        plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
        trainer = pl.Trainer(
            strategy=SingleDeviceStrategy(device=self.info["device"]), max_steps=t.max_steps - self.start_step,
            plugins=plugins,
            logger=logger, callbacks=[RestoreState(), self.checkpointer, *self.extra_callbacks],
            enable_checkpointing=False, use_distributed_sampler=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=t.log_every, limit_val_batches=0)
        loader = torch.utils.data.DataLoader(GlobalBatches(self.datamodule, self.num_micro), batch_size=None,
                                             num_workers=0)
        try:
            trainer.fit(self.module, train_dataloaders=loader)
        finally:
            self.checkpointer.restore_signals()
            for lg in logger or []:
                if type(lg).__name__ == "WandbLogger":  # Lightning leaves the W&B run open; a resume must start anew
                    lg.experiment.finish()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        from ecomvlm.recipes.checkpointing import latest_checkpoint

        h = self.module.history
        out = {"start_step": self.start_step, "losses": [r["loss"] for r in h],
               "tokens_per_s": [r["tokens_per_s"] for r in h], "checkpoints": self.checkpointer.saved,
               "preempted": self.checkpointer.preempted, "init": self.source, "data": self.data_summary(),
               "run_dir": str(self.run_dir), "engine": self.module.describe()}
        final = latest_checkpoint(self.run_dir / "checkpoints")
        out["final_checkpoint"] = str(final) if final else None
        if self.cfg.export.hf_dir and self.info["world_size"] == 1:
            from ecomvlm.recipes.models.hf_export import export_hf
            from ecomvlm.recipes.models.sharding import gather_full_state

            out["hf_dir"] = str(export_hf(gather_full_state(self.model), self.vlm_cfg, self.tokenizer,
                                                self.cfg.export.hf_dir, dtype=torch.float32))
        if self.rank0:
            (self.run_dir / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
        return out

    def data_summary(self) -> dict[str, Any]:
        """Per epoch of this rank: input = trained + skipped (by reason) + pending (0 once the epoch is complete)."""
        dm = self.datamodule
        mine = {"dp_rank": self.info["dp_rank"], "samples": [dm.start, dm.end], "epochs": dm.report(),
                "totals": dm.stats}
        ranks = [mine]
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, mine)
        by_dp = {r["dp_rank"]: r for r in ranks}  # TP/PP ranks of one replica read the same data
        out = {"per_rank": [by_dp[k] for k in sorted(by_dp)]}
        if self.rank0:
            for r in out["per_rank"]:
                for e in r["epochs"]:
                    skipped = sum(e["skipped"].values())
                    why = f" ({', '.join(f'{k} {v}' for k, v in e['skipped'].items())})" if skipped else ""
                    print(f"[data] rank {r['dp_rank']} epoch {e['epoch']}: input {e['input']} = trained {e['trained']}"
                          f" + skipped {skipped}{why} + pending {e['pending']}"
                          f"{'' if e['complete'] else ' (epoch in progress)'}", flush=True)
        return out

    def cleanup(self) -> None:
        from megatron.core import parallel_state as ps

        if ps.model_parallel_is_initialized():
            torch.distributed.barrier()


def backend_of(cfg) -> str:
    """``backend`` of a composed (DictConfig) or typed config: megatron (this file) or automodel."""
    return str(getattr(cfg, "backend", None) or "megatron")


def run(cfg, callbacks: list | None = None) -> dict[str, Any]:
    """Set up and train one stage; returns the summary (losses per step, checkpoints, data counts). Recipes with
    ``backend: automodel`` (complete HF VLMs) run recipes/automodel/recipe.py instead."""
    if backend_of(cfg) == "automodel":
        from ecomvlm.recipes.automodel.recipe import run as run_automodel

        return run_automodel(cfg, callbacks)
    recipe = VLMTrainingRecipe(cfg, callbacks).setup()
    try:
        return recipe.train()
    finally:
        recipe.cleanup()


def plan(cfg, nproc: int) -> str:
    """``ecomvlm train --dry-run`` of an automodel recipe: its layout, the checks, a memory estimate (the megatron
    recipes' plan is recipes/cli.py's)."""
    if backend_of(cfg) != "automodel":
        raise ValueError("plan() covers backend=automodel recipes; megatron recipes print recipes/cli.py's plan")
    from ecomvlm.recipes.automodel.translate import plan as automodel_plan

    return automodel_plan(to_config(cfg), nproc)


def main() -> None:
    from nemo.core.config import hydra_runner

    from ecomvlm.recipes.checkpointing import PREEMPTED_EXIT_CODE
    from ecomvlm.recipes.config import register

    register()

    @hydra_runner(config_path="pkg://ecomvlm.conf", config_name="train")
    def _app(cfg) -> None:
        if run(cfg)["preempted"]:
            sys.exit(PREEMPTED_EXIT_CODE)

    _app()


if __name__ == "__main__":
    main()
