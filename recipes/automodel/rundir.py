"""The run directory of an AutoModel-backend run (no torch import: the launcher reads it on the submit host).

::

    <run.dir>/config.json      our config, as every ecomvlm run writes it (resume compares it, recipes/vlm_train.py)
    <run.dir>/automodel.json   the translated AutoModel config (callables by name) and the weights' source
    <run.dir>/checkpoints/     AutoModel's checkpoint_dir: epoch_<E>_step_<S>/ (S = steps done - 1; model/ sharded
                               safetensors (+ model/consolidated/ on the last one), optim/, rng/, dataloader/,
                               step_scheduler.pt), LATEST, training.jsonl
    <run.dir>/tb/              TensorBoard: train/loss, lr, grad_norm, tokens_per_s, images, pan & scan crops
    <run.dir>/history.jsonl    one line per step, written as it happens (a killed run keeps what it did)
    <run.dir>/summary.json     losses of this invocation, checkpoints, data counts, the result
    <run.dir>/hf               -> the final checkpoint's consolidated HF folder (LoRA: its adapter folder)

A checkpoint directory a save did not finish carries AutoModel's ``.incomplete`` marker and is never resumed.
"""

from __future__ import annotations

import re
from pathlib import Path

INCOMPLETE = ".incomplete"  # nemo_automodel.components.checkpoint.utils._INCOMPLETE_CHECKPOINT_MARKER
STEP_DIR = re.compile(r"^epoch_(\d+)_step_(\d+)$")
HF_LINK = "hf"


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(steps done, directory) of every finished checkpoint, oldest first."""
    root = Path(run_dir) / "checkpoints"
    out = []
    for p in root.glob("epoch_*_step_*") if root.is_dir() else []:
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and not (p / INCOMPLETE).exists() \
                and (p / "step_scheduler.pt").is_file():
            out.append((int(m.group(2)) + 1, p))
    return sorted(out)


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path] | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def is_automodel_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "automodel.json").is_file() or bool(checkpoints(run_dir))


def result_dir(checkpoint: Path) -> Path | None:
    """The HF folder a checkpoint holds: model/consolidated (full fine-tune) or model/ with an adapter (LoRA)."""
    consolidated = checkpoint / "model" / "consolidated"
    if (consolidated / "config.json").is_file():
        return consolidated
    if (checkpoint / "model" / "adapter_config.json").is_file():
        return checkpoint / "model"
    return None


def resolve_init(path: str | Path) -> Path:
    """``init.from_checkpoint``: a finished AutoModel run dir (its hf/ result) or an HF folder."""
    p = Path(path)
    if (p / HF_LINK / "config.json").is_file():
        return (p / HF_LINK).resolve()
    if (p / "config.json").is_file():
        return p
    raise FileNotFoundError(f"init.from_checkpoint={path}: neither an AutoModel run dir with a finished result "
                            f"({p / HF_LINK}) nor an HF folder (config.json)")
