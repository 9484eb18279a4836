"""Weights & Biases beside TensorBoard, for both training backends (``trainer.wandb.enabled=true``).

Optional: ``pip install wandb`` (a run that asks for it without the package stops at setup, naming the fix). The API
key comes from ``WANDB_API_KEY`` (or ``wandb login``), never from a config file, and is never logged. One run
directory is one W&B run: its id is derived from the run directory's absolute path, so a resumed or requeued job
continues the same W&B run (``resume="allow"``), at the same global steps as TensorBoard. ``mode: offline`` writes
under ``<run.dir>/wandb`` for a later ``wandb sync`` (compute nodes without internet).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

MODES = ("online", "offline", "disabled")


def check(cfg) -> None:
    """Refuse a W&B setting that cannot work, before any model is built."""
    if not cfg.enabled:
        return
    if cfg.mode not in MODES:
        raise ValueError(f"trainer.wandb.mode={cfg.mode!r}: choose one of {MODES}")
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ImportError("trainer.wandb.enabled=true needs the wandb package: pip install wandb (or set "
                          "trainer.wandb.enabled=false)") from None


def run_id(run_dir: str | Path) -> str:
    """A stable W&B run id per run directory (resumes and requeues continue one W&B run)."""
    return "ecomvlm-" + hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def init_kwargs(cfg, run_dir: str | Path, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """What ``wandb.init`` (or Lightning's WandbLogger) is given for a run."""
    return {"project": cfg.project, "entity": cfg.entity, "name": name, "id": run_id(run_dir), "resume": "allow",
            "dir": str(run_dir), "mode": cfg.mode, "config": config}


def lightning_logger(cfg, run_dir: str | Path, name: str, config: dict[str, Any]):
    """Lightning's WandbLogger for the megatron backend."""
    from lightning.pytorch.loggers import WandbLogger

    kw = init_kwargs(cfg, run_dir, name, config)
    return WandbLogger(save_dir=kw.pop("dir"), log_model=False, **kw)


class DirectRun:
    """A W&B run logged step by step (the AutoModel backend, which keeps its own loop)."""

    def __init__(self, cfg, run_dir: str | Path, name: str, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(**init_kwargs(cfg, run_dir, name, config))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()
