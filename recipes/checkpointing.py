"""Megatron distributed checkpoints of EcomVLM models (+ what is needed to rebuild them).

Layout of one checkpoint directory::

    <ckpt>/model/          megatron dist_checkpointing (torch_dist): each rank writes its shards; loading works
                           at any other TP/PP (resharded on load)
    <ckpt>/optimizer/      optional, the training loop's optimizer/scheduler state (see recipes/ training)
    <ckpt>/tokenizer/      the tokenizer the model was trained with (chat template included)
    <ckpt>/meta.json       format, step, model config (VLMConfig as a dict), the TP/PP it was saved at

Entry points that save checkpoints must guard ``if __name__ == "__main__":`` — megatron's writer starts helper
processes with the "spawn" method, which re-imports the main module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

FORMAT = "ecomvlm-megatron-v1"


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def save_checkpoint(model, ckpt_dir: str | Path, *, step: int, tokenizer=None, parallel=None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Collective: every rank calls it. Writes into a temporary folder and renames, so a run killed mid-save
    never leaves a half-written checkpoint that resume would pick up."""
    from megatron.core import dist_checkpointing

    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "model").mkdir(parents=True)
    _barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(tmp / "model"))
    if _rank() == 0:
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "tokenizer")
        meta = {"format": FORMAT, "step": int(step), "vlm": dataclasses.asdict(model.cfg),
                "saved_at": dataclasses.asdict(parallel) if parallel is not None else None, **(extra or {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    _barrier()
    return tmp


def finalize_checkpoint(tmp: Path) -> Path:
    """Rename <ckpt>.tmp -> <ckpt> once everything (model + optimizer) is written. Rank 0 renames."""
    final = tmp.with_name(tmp.name[: -len(".tmp")])
    if _rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    _barrier()
    return final


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    ckpt_dir = Path(ckpt_dir)
    meta_path = ckpt_dir / "meta.json"
    if not meta_path.is_file():
        hint = " (it is an unfinished save: a .tmp folder)" if ckpt_dir.name.endswith(".tmp") else ""
        raise FileNotFoundError(f"{meta_path} not found: {ckpt_dir} is not an ecomvlm checkpoint{hint}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{ckpt_dir}: checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def vlm_config_from_meta(meta: dict[str, Any]):
    from ecomvlm.recipes.models.vlm import VLMConfig

    return VLMConfig.from_dict(meta["vlm"])


def load_checkpoint(model, ckpt_dir: str | Path) -> dict[str, Any]:
    """Collective: load model weights saved at any TP/PP into this rank's model. Returns meta."""
    from megatron.core import dist_checkpointing

    meta = read_meta(ckpt_dir)
    state = dist_checkpointing.load(model.sharded_state_dict(), str(Path(ckpt_dir) / "model"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise ValueError(f"checkpoint {ckpt_dir} does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return meta


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """Newest finished checkpoint (step_XXXXXXXX folders with meta.json) under a run's checkpoints/."""
    d = Path(checkpoints_dir)
    if not d.is_dir():
        return None
    done = [p for p in d.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp") and (p / "meta.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)
