"""Fine-tune a complete HF VLM with NeMo AutoModel: the ``automodel`` backend of ``ecomvlm train``.

    ecomvlm train gemma3_4b_item_intel_ft --nproc 8 model.hf_path=HF_DIR data.shards=SHARDS_DIR

:class:`AutoModelRecipe` runs in named phases, like the megatron recipe (recipes/vlm_train.py):

- ``setup_distributed``: torchrun or srun (SLURM) ranks, the CPU shim without CUDA;
- ``setup_run_dir``: the run directory rules of every ecomvlm run - an existing run is resumed only to go on with the
  run it holds (steps left, the same settings in config.json), otherwise refused;
- ``setup_inputs``: the checkpoint's processor (chat template, image processing, pan & scan) and our shard dataset
  (recipes/automodel/data.py), with the published processor settings compared to the folder's;
- ``setup_engine``: our config translated (recipes/automodel/translate.py) and AutoModel's
  ``FinetuneRecipeForVLM.setup()`` - process groups and device mesh, the model loaded and sharded (FSDP2 + TP/CP),
  freezing or LoRA, optimizer and schedule, dataloader, and the restore of the last checkpoint (model, optimizer,
  scheduler, RNG, data position);
- ``train``: AutoModel's loop; our hooks log every step to TensorBoard and history.jsonl, call the callbacks, and
  count images, pan & scan crops and skipped samples;
- ``finish``: the consolidated HF folder of the last checkpoint completed (processor, remote code) and linked as
  ``run.dir/hf`` - the run's result (no export step); summary.json.

Pre-emption (SIGTERM, SLURM's SIGUSR1): AutoModel saves after the current step and stops; the summary says
``preempted`` and ``ecomvlm train`` exits 75, which the launcher requeues. Run directory layout:
recipes/automodel/rundir.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

log = logging.getLogger("ecomvlm.train.automodel")


def _distributed_env() -> dict[str, int]:
    """torchrun's variables, else SLURM's (srun: one task per GPU) exported as torchrun's for AutoModel."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        if "MASTER_ADDR" not in env:
            raise RuntimeError("running under srun with several tasks but MASTER_ADDR is unset; use `ecomvlm launch`")
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_PORT", "29500")
    return {"rank": int(env.get("RANK", 0)), "world_size": int(env.get("WORLD_SIZE", 1)),
            "local_rank": int(env.get("LOCAL_RANK", 0))}


def _engine_class():
    """AutoModel's VLM recipe with our per-step hooks (imported only when a run starts)."""
    from nemo_automodel.recipes.vlm.finetune import FinetuneRecipeForVLM

    from ecomvlm.recipes.automodel.data import STATS_KEY

    class EcomVLMFinetune(FinetuneRecipeForVLM):
        hooks: Any = None  # the AutoModelRecipe (set before setup)

        def _run_train_optim_step(self, batches, max_grad_norm=None):
            stats = [b.pop(STATS_KEY) for b in batches if STATS_KEY in b]
            out = super()._run_train_optim_step(batches, max_grad_norm)
            self.hooks.on_batches(stats)
            return out

        def log_train_metrics(self, log_data):
            super().log_train_metrics(log_data)
            self.hooks.on_step(log_data)

    return EcomVLMFinetune


class AutoModelRecipe:
    def __init__(self, cfg, callbacks: list | None = None) -> None:
        from ecomvlm.recipes.config import to_config

        self.cfg = to_config(cfg)
        self.callbacks = list(callbacks or [])
        self.history: list[dict[str, Any]] = []
        self.data_counts: Counter = Counter()
        self.crops: Counter = Counter()  # extra pan & scan crops per image -> images
        self.skipped: Counter = Counter()

    # ---- setup -----------------------------------------------------------------------------------------
    def setup(self) -> "AutoModelRecipe":
        from ecomvlm.recipes import wandb_logging

        wandb_logging.check(self.cfg.trainer.wandb)
        self.setup_distributed()
        self.setup_run_dir()
        self.setup_inputs()
        self.setup_engine()
        return self

    def setup_distributed(self) -> None:
        import torch

        self.info = _distributed_env()
        self.rank0 = self.info["rank"] == 0
        self.cuda = torch.cuda.is_available()
        if not self.cuda:
            from ecomvlm.recipes.models.megatron_cpu_shim import apply_automodel

            apply_automodel()
        from ecomvlm.recipes.automodel.translate import check_layout

        self.layout = check_layout(self.cfg, self.info["world_size"])

    def setup_run_dir(self) -> None:
        from ecomvlm.recipes.automodel.rundir import latest_checkpoint, resolve_init

        c = self.cfg
        self.run_dir = Path(c.run.dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        latest = latest_checkpoint(self.run_dir)
        self.start_step, self.latest = (latest if latest else (0, None))
        saved = self.run_dir / "automodel.json"
        if self.latest is not None:
            self.check_resumable(self.start_step)
            # the weights' source of the run being resumed (init.* may change on resume; the run may not)
            self.model_path = json.loads(saved.read_text())["model_path"] if saved.is_file() else c.model.hf_path
            self.source = f"resumed {self.latest}"
        elif c.init.from_checkpoint:
            self.model_path = str(resolve_init(c.init.from_checkpoint))
            self.source = f"HF folder {self.model_path} (init.from_checkpoint)"
        else:
            self.model_path = c.model.hf_path
            self.source = f"HF folder {self.model_path}"
        if not (Path(self.model_path) / "config.json").is_file():
            raise FileNotFoundError(f"model.hf_path={self.model_path} is not an HF checkpoint folder (no config.json)"
                                    f"; download the published model ({c.model.hub_id or c.model.name}) there")

    def check_resumable(self, step: int) -> None:
        from ecomvlm.recipes.vlm_train import check_resumable

        check_resumable(self.cfg, Path(self.run_dir), step, "starts a new run from its result")

    def setup_inputs(self) -> None:
        from ecomvlm.recipes.automodel.data import DataSpec
        from ecomvlm.recipes.automodel.inputs import load_inputs, processor_settings

        c, m = self.cfg, self.cfg.model
        self.processor_kwargs = m.processor.call_kwargs()
        self.inputs = load_inputs(self.model_path, processor_kwargs=self.processor_kwargs,
                                  trust_remote_code=m.trust_remote_code)
        folder = processor_settings(self.model_path)
        self.processor_differences = {k: (v, folder.get(k)) for k, v in m.processor.published.items()
                                      if folder.get(k) != v}
        if self.processor_differences and self.rank0:
            log.warning("processor settings of %s differ from the published %s (the folder's are used): %s",
                        self.model_path, m.hub_id or m.name,
                        ", ".join(f"{k}: published={a} folder={b}" for k, (a, b) in self.processor_differences.items()))
        self.geometry_differences: dict[str, Any] = {}
        if m.geometry:
            from transformers import AutoConfig

            from ecomvlm.recipes.automodel.geometry import checkpoint_differences

            folder_config = AutoConfig.from_pretrained(self.model_path, trust_remote_code=m.trust_remote_code)
            self.geometry_differences = checkpoint_differences(m, folder_config)
            if self.geometry_differences and self.rank0:
                log.warning("%s is not the published %s (%d architecture settings differ, e.g. %s): training the "
                            "folder's model", self.model_path, m.hub_id or m.name, len(self.geometry_differences),
                            ", ".join(f"{k}: published={a} folder={b}"
                                      for k, (a, b) in list(self.geometry_differences.items())[:3]))
        d = c.data
        self.data_spec = DataSpec(shards=str(d.shards), model_dir=str(self.model_path),
                                  processor_kwargs=self.processor_kwargs, trust_remote_code=m.trust_remote_code,
                                  max_seq_length=d.max_seq_length, truncation=d.truncation, max_images=d.max_images,
                                  max_image_tokens=d.max_image_tokens)

    def setup_engine(self) -> None:
        from nemo_automodel.components.config.loader import ConfigNode

        from ecomvlm.recipes.automodel.translate import automodel_config

        c = self.cfg
        tok = self.inputs.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        # by import path with plain keys: AutoModel saves this config as YAML with every checkpoint
        dataset = {"_target_": "ecomvlm.recipes.automodel.data.build_dataset", **asdict(self.data_spec)}
        collate = {"_target_": "ecomvlm.recipes.automodel.data.collate", "pad_token_id": int(pad),
                   "pixel_dtype": "bfloat16" if c.precision.params_dtype == "bf16" else None}
        self.am_config = automodel_config(c, world_size=self.info["world_size"], model_path=str(self.model_path),
                                          checkpoint_dir=str(self.checkpoint_dir), dataset=dataset,
                                          collate=collate, cuda=self.cuda)
        if self.latest is not None:
            self.am_config["checkpoint"]["restore_from"] = str(self.latest)
        if self.rank0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_configs()
        engine_class = _engine_class()
        self.engine = engine_class(ConfigNode(self.am_config))
        self.engine.hooks = self
        self.engine.setup()
        context_id = getattr(self.inputs, "context_id", None)
        if context_id is not None:  # InternVL-style remote code fills these tokens with image features
            for part in self.engine.model_parts:
                part.img_context_token_id = context_id
        self.tb = self.wandb = None
        if self.rank0:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.start_step + 1)
            if c.trainer.wandb.enabled:
                from ecomvlm.recipes import wandb_logging
                from ecomvlm.recipes.config import as_dict

                self.wandb = wandb_logging.DirectRun(c.trainer.wandb, self.run_dir, c.run.name, as_dict(c))
            history = self.run_dir / "history.jsonl"
            if history.is_file():  # steps a killed run did after its last checkpoint are done again: drop them
                kept = [line for line in history.read_text().splitlines()
                        if line.strip() and json.loads(line)["step"] <= self.start_step]
                history.write_text("".join(f"{line}\n" for line in kept))
            self.history_file = open(history, "a")
        log.info("automodel %s: %s; %s", c.model.name, self.source, self.layout)

    def _write_configs(self) -> None:
        from ecomvlm.recipes.config import as_dict

        (self.run_dir / "config.json").write_text(json.dumps(as_dict(self.cfg), indent=2, default=str) + "\n")

        record = {"model_path": str(self.model_path), "automodel": self.am_config,
                  "data": asdict(self.data_spec), "processor_differences": self.processor_differences,
                  "geometry_differences": self.geometry_differences}
        (self.run_dir / "automodel.json").write_text(json.dumps(record, indent=2, default=str) + "\n")

    # ---- hooks (called by the engine) ------------------------------------------------------------------
    def on_batches(self, stats: list[dict[str, Any]]) -> None:
        for s in stats:
            self.data_counts["images"] += s["images"]
            self.data_counts["samples"] += len(s["indices"])
            for n in s["extra_crops"]:
                self.crops[n] += 1
            self.skipped.update(s["skipped"])
            self.data_counts.update(f"note_{n}" for n in s["notes"])
        self._step_images = sum(s["images"] for s in stats)
        self._step_crops = sum(sum(s["extra_crops"]) for s in stats)

    def on_step(self, log_data) -> None:
        m = log_data.metrics
        step = int(log_data.step) + 1  # AutoModel counts from 0; ecomvlm's steps are 1-based (steps done)
        row = {"step": step, "epoch": int(log_data.epoch), "loss": float(m["loss"]), "lr": float(m["lr"]),
               "grad_norm": float(m["grad_norm"]), "tokens_per_s": float(m["tps"]),
               "label_tokens": int(m["num_label_tokens"]), "images": getattr(self, "_step_images", 0),
               "extra_crops": getattr(self, "_step_crops", 0), "time": time.time()}
        self.history.append(row)
        if self.tb is not None:
            for k in ("loss", "lr", "grad_norm", "tokens_per_s", "images", "extra_crops"):
                self.tb.add_scalar(f"train/{k}", row[k], step)
            if self.wandb is not None:
                self.wandb.log({f"train/{k}": row[k] for k in ("loss", "lr", "grad_norm", "tokens_per_s", "images",
                                                               "extra_crops")}, step)
            self.history_file.write(json.dumps(row) + "\n")
            self.history_file.flush()
            if step % max(1, self.cfg.trainer.log_every) == 0:
                self.tb.flush()
        for cb in self.callbacks:
            cb.on_step_end(self, step, row)

    # ---- train -----------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        try:
            self.engine.run_train_validation_loop()
        finally:
            if self.tb is not None:
                self.tb.close()
            if self.wandb is not None:
                self.wandb.close()
                self.history_file.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        import torch

        from ecomvlm.recipes.automodel.rundir import HF_LINK, checkpoints, result_dir

        preempted = bool(getattr(self.engine.step_scheduler, "sigterm_flag", False))
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        saved = checkpoints(self.run_dir)
        final = saved[-1][1] if saved else None
        out: dict[str, Any] = {
            "backend": "automodel", "start_step": self.start_step, "losses": [r["loss"] for r in self.history],
            "tokens_per_s": [r["tokens_per_s"] for r in self.history],
            "checkpoints": [str(p) for s, p in saved if s > self.start_step], "preempted": preempted,
            "init": self.source, "run_dir": str(self.run_dir),
            "final_checkpoint": str(final) if final else None, "hf_dir": None,
            "data": {"shards": self.data_spec.shards, "samples_trained_this_rank": self.data_counts["samples"],
                     "images_this_rank": self.data_counts["images"], "skipped_this_rank": dict(self.skipped),
                     "notes_this_rank": {k[5:]: v for k, v in self.data_counts.items() if k.startswith("note_")}},
            "pan_and_scan": {"enabled": bool(self.processor_kwargs.get("do_pan_and_scan")),
                             "extra_crops_per_image": {str(k): v for k, v in sorted(self.crops.items())},
                             "extra_crops_total": sum(k * v for k, v in self.crops.items())},
            "engine": {"engine": "nemo_automodel", "world_size": self.info["world_size"], **self.layout,
                       "processor_kwargs": self.processor_kwargs, "peft": self.cfg.peft.method},
        }
        result = result_dir(final) if final is not None and not preempted else None
        if result is not None and self.rank0:
            self.complete_result(result)
            link = self.run_dir / HF_LINK
            if link.is_symlink() or link.exists():
                link.unlink() if link.is_symlink() else shutil.rmtree(link)
            link.symlink_to(os.path.relpath(result, self.run_dir))
            out["hf_dir"] = str(link)
            if self.cfg.export.hf_dir:
                shutil.copytree(result, self.cfg.export.hf_dir, dirs_exist_ok=True)
                out["export"] = self.cfg.export.hf_dir
        if self.rank0:
            (self.run_dir / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
        return out

    def complete_result(self, result: Path) -> None:
        """What AutoModel's consolidated folder may lack for ``from_pretrained``: the processor files (AutoModel
        saves them only when AutoProcessor works) and remote code (``*.py`` the config's auto_map names); and the
        published weight names vLLM loads (vllm_layout.py)."""
        from ecomvlm.recipes.automodel.vllm_layout import write_published_layout

        write_published_layout(result)
        src = Path(self.model_path)
        for f in src.iterdir():
            if f.is_file() and not (result / f.name).exists() and (
                    f.suffix in (".py", ".jinja", ".txt", ".model", ".tiktoken") or
                    f.name.endswith(("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                     "preprocessor_config.json", "processor_config.json", "chat_template.json",
                                     "generation_config.json", "video_preprocessor_config.json"))):
                shutil.copy2(f, result / f.name)

    def cleanup(self) -> None:
        pass


def run(cfg, callbacks: list | None = None) -> dict[str, Any]:
    """Set up and fine-tune; returns the summary (losses per step, checkpoints, the HF result folder)."""
    recipe = AutoModelRecipe(cfg, callbacks).setup()
    try:
        return recipe.train()
    finally:
        recipe.cleanup()
