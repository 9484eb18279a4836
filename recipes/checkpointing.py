"""Megatron distributed checkpoints of EcomVLM models, the Lightning callback that writes them, and format migration.

Layout of one checkpoint directory::

    <ckpt>/model/          megatron dist_checkpointing (torch_dist): each rank writes its shards; loading works
                           at any other TP/PP (resharded on load)
    <ckpt>/optimizer/      the engine's optimizer + scheduler + RNG state, one file per rank (resume only)
    <ckpt>/tokenizer/      the tokenizer the model was trained with (chat template included)
    <ckpt>/meta.json       format, step, model config, the layout it was saved at, data position, stage

Formats: ``ecomvlm-megatron-v2`` is written. ``v1`` checkpoints (model config as one flat encoder/decoder record;
optimizer state of the removed "lean" engine) still load for weights - ``init.from_checkpoint``, ``ecomvlm export``
- via :func:`migrate`; resuming a v1 *run* is refused with the way out (a new run from its weights).

Entry points that save checkpoints must guard ``if __name__ == "__main__":`` — megatron's writer starts helper
processes with the "spawn" method, which re-imports the main module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch import Callback

FORMAT = "ecomvlm-megatron-v2"
V1 = "ecomvlm-megatron-v1"
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped early on a signal after saving; starting again resumes
log = logging.getLogger(__name__)


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def save_checkpoint(model, ckpt_dir: str | Path, *, step: int, tokenizer=None, parallel=None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Collective: every rank calls it. Writes into a temporary folder (finished by :func:`finalize_checkpoint`),
    so a run killed mid-save never leaves a half-written checkpoint that resume would pick up."""
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
        meta = {"format": FORMAT, "step": int(step), "model": model.cfg.to_dict(),
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


# ---------------------------------------------------------------------------------------------------------
# reading, and v1 -> v2
# ---------------------------------------------------------------------------------------------------------
_V1_INACTIVE = {  # v1 kept every family's fields in one record; these were inert unless the family used them
    "decoder": {"rope_scaling_factor": None, "activation": "swiglu", "sliding_window": None, "sliding_layers": None,
                "local_rotary_base": None, "rope_linear_factor": None, "query_pre_attn_scalar": None,
                "embedding_scale": False, "extra": {}},
    "encoder": {},
}
_V1_DERIVED = {"gemma3": {"activation": "geglu_tanh", "embedding_scale": True}}  # implied by the v2 family


def migrate(meta: dict[str, Any]) -> dict[str, Any]:
    """A v1 meta.json -> v2 (in memory). Raises if v1 used a setting v2 cannot express."""
    from ecomvlm.recipes.models.registry import decoder_class, encoder_class

    old = meta["vlm"]
    model: dict[str, Any] = {k: v for k, v in old.items() if k not in ("encoder", "decoder")}
    for kind, family_class in (("encoder", encoder_class), ("decoder", decoder_class)):
        sub = dict(old[kind])
        fields = {f.name for f in dataclasses.fields(family_class(sub["family"]))}
        derived = _V1_DERIVED.get(sub["family"], {}) if kind == "decoder" else {}
        model[kind] = {k: v for k, v in sub.items() if k in fields}
        for k, v in sub.items():
            inert = (k in derived and v == derived[k]) or (k in _V1_INACTIVE[kind] and v == _V1_INACTIVE[kind][k])
            # v1 encoders carried the other family's image settings, which never applied
            if k not in fields and not inert and kind == "decoder":
                raise ValueError(f"v1 checkpoint: model.{kind}.{k}={v!r} has no place in the {sub['family']} family")
    out = {k: v for k, v in meta.items() if k != "vlm"}
    out.update(format=FORMAT, model=model, migrated_from=V1)
    return out


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    ckpt_dir = Path(ckpt_dir)
    meta_path = ckpt_dir / "meta.json"
    if not meta_path.is_file():
        hint = " (it is an unfinished save: a .tmp folder)" if ckpt_dir.name.endswith(".tmp") else ""
        raise FileNotFoundError(f"{meta_path} not found: {ckpt_dir} is not an ecomvlm checkpoint{hint}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") == V1:
        return migrate(meta)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{ckpt_dir}: checkpoint format {meta.get('format')!r}, expected {FORMAT!r} (or {V1!r})")
    return meta


def vlm_config_from_meta(meta: dict[str, Any]):
    from ecomvlm.recipes.models.registry import VLMConfig

    return VLMConfig.from_dict(meta["model"])


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


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its latest checkpoint)."""
    src = Path(path)
    if not (src / "meta.json").is_file() and (src / "checkpoints").is_dir():
        src = latest_checkpoint(src / "checkpoints") or src
    return src


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """Newest finished checkpoint (step_XXXXXXXX folders with meta.json) under a run's checkpoints/."""
    d = Path(checkpoints_dir)
    if not d.is_dir():
        return None
    done = [p for p in d.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp") and (p / "meta.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


# ---------------------------------------------------------------------------------------------------------
# the callback
# ---------------------------------------------------------------------------------------------------------
class CheckpointCallback(Callback):
    """Saves every ``every`` steps, at ``max_steps``, and when the job is told to stop - SIGUSR1 (SLURM's
    ``--signal=USR1@N`` warning before the time limit) or SIGTERM (pre-emption, scancel): the current step
    finishes, every rank agrees, the checkpoint is written and training stops (``self.preempted``).

    ``save(step)`` writes one checkpoint (collective); ``step()`` gives the global step just trained.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self, save: Callable[[int], Path], step: Callable[[], int], *, every: int, max_steps: int) -> None:
        self._save, self._step, self.every, self.max_steps = save, step, every, max_steps
        self.saved: list[str] = []
        self.signalled: int | None = None
        self.preempted = False
        self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}  # from setup on

    def _on_signal(self, signum, _frame) -> None:
        self.signalled = signum
        print(f"[train] received signal {signal.Signals(signum).name}: saving after this step, then stopping",
              flush=True)

    def on_train_start(self, trainer, pl_module) -> None:
        # again after Lightning's own handlers (registered just before training starts), so ours are the ones run
        for s in self.SIGNALS:
            signal.signal(s, self._on_signal)

    def on_train_end(self, trainer, pl_module) -> None:
        self.restore_signals()

    def restore_signals(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _stop_requested(self, device) -> bool:
        flag = torch.tensor(float(self.signalled is not None), device=device)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # every rank stops at one step
        return bool(flag.item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = self._step()
        stop = self._stop_requested(pl_module.device)
        if step % self.every == 0 or step == self.max_steps or stop:
            self.saved.append(str(self._save(step)))
        if stop and step < self.max_steps:
            self.preempted = True
            trainer.should_stop = True
