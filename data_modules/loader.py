"""Shard folder -> packed training batches, through megatron-energon.

energon reads the folder ``ecomvlm data shards`` wrote (a ``CrudeWebdataset``), splits its samples (not whole
shards) over data-parallel ranks x loader workers, shuffles shard slices and samples with a seeded buffer, and saves
and restores every rank's position exactly. :class:`VLMTaskEncoder` is our part: raw sample -> tokens + pixels
(``preprocess.build_sample``), first-fit packing over a window of samples, collation; every sample it cannot use is
counted by reason and reported with the next batch, and :class:`~ecomvlm.data_modules.accounting.SampleLedger`
keeps trained + skipped = input per rank and epoch.

The loader repeats forever (training counts steps): every rank takes the same number of batches, and a partial
micro-batch at an epoch's end fills with the next epoch's samples. Resume needs the save's data-parallel size and
``data.num_workers``.

Positions are exact only at step boundaries taken from :meth:`VLMDataModule.batches` without read-ahead: the engine
pulls batches itself (Lightning's ``dataloader_iter``), so a checkpoint after step N holds the position after
exactly N steps' batches.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import torch
from megatron.energon import (
    Cooker,
    DefaultTaskEncoder,
    SkipSample,
    WorkerConfig,
    basic_sample_keys,
    cooker,
    get_savable_loader,
    get_train_dataset,
    stateless,
)

from ecomvlm.data_modules.accounting import SampleLedger
from ecomvlm.data_modules.chat_templates import get_chat_format
from ecomvlm.data_modules.config import DataConfig
from ecomvlm.data_modules.llava_json import CORRUPT_IMAGE, record_problem
from ecomvlm.data_modules.packing import PackedRow, collate_rows, first_fit_decreasing
from ecomvlm.data_modules.preprocess import ImageSpec, SampleTooLong, build_sample, finish_pixels
from ecomvlm.data_modules.shard_folder import load_manifest, shard_problem
from ecomvlm.data_modules.shards import NV_META

TOO_LONG = "too_long"
BROKEN_SAMPLE = "broken_sample"  # a tar sample without its json or an image part


@stateless
@cooker
def cook_shard_sample(crude: dict) -> dict:
    """energon's raw dict -> our sample's parts (bytes; decoding waits for encode_sample, after the shuffle buffer)."""
    out = dict(**basic_sample_keys(crude), index=int(crude["__restore_key__"][-1]), problem=None)
    try:
        meta = json.loads(crude["json"])
        out["meta"], out["images"] = meta, [crude[name] for name in meta.get("images", [])]
    except Exception as e:  # noqa: BLE001 - counted by encode_sample as a broken sample
        out["meta"], out["images"], out["problem"] = None, [], f"{type(e).__name__}: {e}"
    return out


class _Skipped(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class VLMTaskEncoder(DefaultTaskEncoder):
    """Our sample -> tokens/images code as energon's task encoder. Runs inside the loader workers."""

    decoder = None
    cookers = [Cooker(cook_shard_sample)]

    def __init__(self, cfg: DataConfig, tokenizer, chat_format: str, image_spec: ImageSpec, image_token_id: int,
                 pad_to_multiple_of: int = 1, give_up_after: int = 10_000) -> None:
        super().__init__()
        self.cfg, self.tok, self.fmt = cfg, tokenizer, get_chat_format(chat_format)
        self.spec, self.image_token_id, self.pad_multiple = image_spec, image_token_id, pad_to_multiple_of
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.give_up_after = give_up_after
        self._pending: list[tuple[int, str]] = []  # skipped since the last batch (this worker)
        self._skipped_in_a_row: Counter = Counter()

    def _build(self, s: dict):
        if s["problem"]:
            raise _Skipped(BROKEN_SAMPLE)
        meta = s["meta"]  # folders upgraded from older ecomvlm were checked less when written
        problem = record_problem({"conversations": meta.get("conversations"), "image": meta.get("images") or None})
        if problem:
            raise _Skipped(problem[0])
        try:
            sample = build_sample(s["meta"], s["images"], self.tok, self.fmt, self.spec, self.cfg,
                                  self.image_token_id, decode_pixels=False)
        except SampleTooLong:
            raise _Skipped(TOO_LONG) from None
        except (OSError, SyntaxError, ValueError) as e:
            from PIL import UnidentifiedImageError

            if isinstance(e, (UnidentifiedImageError, OSError, SyntaxError)):
                raise _Skipped(CORRUPT_IMAGE) from None
            raise
        sample.index = s["index"]
        return sample

    @stateless
    def preencode_sample(self, s: dict) -> dict:
        """Tokens, loss mask and image plan (image sizes come from headers): light enough for a large packing window."""
        try:
            sample = self._build(s)
        except _Skipped as e:
            self._skip(s["index"], e.reason)
        except Exception as e:  # noqa: BLE001 - an unforeseen failure is still one counted sample, not a crash
            self._skip(s["index"], f"error:{type(e).__name__}")
        self._skipped_in_a_row.clear()
        return {**basic_sample_keys(s), "sample": sample}

    @stateless
    def postencode_sample(self, s: dict) -> dict:
        """Pixels, once the sample's row is chosen."""
        try:
            finish_pixels(s["sample"], self.spec)
        except Exception:  # noqa: BLE001 - an image the shard writer could decode and now cannot: counted
            self._skip(s["sample"].index, CORRUPT_IMAGE)
        return s

    def _skip(self, index: int, reason: str):
        self._pending.append((index, reason))
        self._skipped_in_a_row[reason] += 1
        if sum(self._skipped_in_a_row.values()) > self.give_up_after:
            # energon would loop over a share with no usable sample forever (SystemError is fatal in energon)
            raise SystemError(f"the last {self.give_up_after} samples of this loader worker were all skipped "
                              f"({dict(self._skipped_in_a_row)}): check data.max_seq_length / max_image_tokens "
                              f"against the data, or the shards with `ecomvlm data shards --verify`")
        raise SkipSample()

    # ---- packing: first-fit decreasing over the window energon buffers (data.pack_window samples) ----
    def select_samples_to_pack(self, samples: list[dict]) -> list[list[dict]]:
        rows = first_fit_decreasing([s["sample"] for s in samples], self.cfg.max_seq_length)
        by_id = {id(s["sample"]): s for s in samples}
        return [[by_id[id(x)] for x in row.samples] for row in rows]

    @stateless
    def pack_selected_samples(self, samples: list[dict]) -> dict:
        return {"row": PackedRow([s["sample"] for s in samples])}

    @stateless
    def batch(self, items: list[dict]) -> dict:
        rows = [it["row"] if "row" in it else PackedRow([it["sample"]]) for it in items]
        out = collate_rows(rows, self.pad_id, multiple_of=self.pad_multiple)
        out["trained"] = [(s.index, len(s) - 1, list(s.notes)) for r in rows for s in r.samples]
        out["skipped"], self._pending = self._pending, []
        return out

    @stateless
    def encode_batch(self, batch: dict) -> dict:
        return batch


def rank_range(total: int, rank: int, world_size: int, num_workers: int) -> tuple[int, int]:
    """The sample indices [start, end) energon gives a data-parallel rank."""
    from ecomvlm.data_modules.energon_dataset import balanced_offsets

    offsets = balanced_offsets(0, total, world_size, rank, max(1, num_workers))
    return offsets[0], offsets[-1]


def check_shard_folder(path: str | Path) -> dict[str, Any]:
    """The manifest of a usable shard folder; a clear error naming the fix otherwise (cheap: no tar is read)."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"data.shards={path!r} is not a folder; make one with `ecomvlm data shards ... --out "
                                f"{path}`")
    manifest = load_manifest(p)
    if not (p / NV_META / "split.yaml").is_file():
        raise ValueError(f"{p} lacks {NV_META}/split.yaml: run `ecomvlm data shards --upgrade {p}`")
    for name in manifest["shards"]:
        side_path = p / name.replace(".tar", ".json")
        side = json.loads(side_path.read_text()) if side_path.is_file() else None
        problem = "no sidecar" if side is None else shard_problem(p, side, deep=False)
        if problem:
            raise ValueError(f"shard {p / name} is {problem}: run `ecomvlm data shards --verify {p} --rebuild` to "
                             f"find and re-write the bad shards")
    if manifest["samples"] == 0:
        raise ValueError(f"{p} holds no samples (skipped at build: {manifest.get('skipped')})")
    return manifest


class VLMDataModule:
    """One rank's training batches, its exact position and its sample accounting."""

    def __init__(self, cfg: DataConfig, tokenizer, chat_format: str, image_spec: ImageSpec, image_token_id: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, pad_to_multiple_of: int = 1) -> None:
        self.cfg, self.rank, self.world_size, self.seed = cfg, rank, world_size, seed
        self.manifest = check_shard_folder(cfg.shards)
        self.total = int(self.manifest["samples"])
        if self.total < world_size * max(1, cfg.num_workers):
            raise ValueError(f"{cfg.shards} holds {self.total} samples, fewer than data-parallel ranks x "
                             f"data.num_workers = {world_size} x {max(1, cfg.num_workers)}: lower data.num_workers")
        self.start, self.end = rank_range(self.total, rank, world_size, cfg.num_workers)
        self.ledger = SampleLedger(self.start, self.end)
        share = self.end - self.start
        self.task_encoder = VLMTaskEncoder(cfg, tokenizer, chat_format, image_spec, image_token_id,
                                           pad_to_multiple_of,
                                           give_up_after=2 * share + cfg.shuffle_buffer + cfg.pack_window)
        self.worker_config = WorkerConfig(rank=rank, world_size=world_size, num_workers=cfg.num_workers,
                                          seed_offset=seed, global_error_handler=_fail_loudly)
        # buffers longer than a worker's share would mix epochs (a sample of epoch 2 trained before all of epoch 1):
        # on small datasets they are cut to the share; on large ones they are far below it
        per_worker = max(1, share // max(1, cfg.num_workers))
        shuffle = min(cfg.shuffle_buffer, per_worker)
        dataset = get_train_dataset(
            str(cfg.shards), split_part="train", worker_config=self.worker_config, batch_size=cfg.micro_batch_size,
            shuffle_buffer_size=shuffle if shuffle > 1 else None, max_samples_per_sequence=cfg.shuffle_slice,
            packing_buffer_size=min(cfg.pack_window, per_worker) if cfg.pack else None,
            task_encoder=self.task_encoder, repeat=True)
        self.loader = get_savable_loader(dataset, watchdog_timeout_seconds=cfg.loader_watchdog_s)
        self._iter: Iterator | None = None
        self.batches_taken = 0

    # ---- batches ----
    def batches(self) -> Iterator[dict[str, Any]]:
        """Endless micro-batches of this rank; each taken batch is counted in the ledger."""
        if self._iter is None:
            self._iter = iter(self.loader)
        while True:
            try:
                batch = next(self._iter)
            except Exception as e:
                ours = _our_stop(e)
                if ours is not None:
                    raise RuntimeError(f"{self.cfg.shards}: {ours}") from None
                raise RuntimeError(f"reading the shards at {self.cfg.shards} failed ({type(e).__name__}: {e}); check "
                                   f"them with `ecomvlm data shards --verify {self.cfg.shards}`") from e
            trained, skipped = batch.pop("trained"), batch.pop("skipped")
            self.ledger.record_batch(trained, skipped)
            batch["sample_index"] = [i for i, _, _ in trained]
            batch["skipped"] = skipped
            self.batches_taken += 1
            yield batch

    # ---- position ----
    def state_dict(self) -> dict[str, Any]:
        """This rank's position (energon's per-worker states) and accounting, after the batches taken so far."""
        return {"energon": self._loader_state(), "ledger": self.ledger.state_dict(), "rank": self.rank,
                "world_size": self.world_size, "num_workers": self.cfg.num_workers,
                "shards_fingerprint": self.manifest.get("fingerprint"), "batches_taken": self.batches_taken}

    def _loader_state(self):
        for _ in range(50):
            state = self.loader.save_state_rank()
            if not _startup_race(self.loader, state):
                return state
            time.sleep(0.05)  # a worker answered before storing its first position: ask again
        raise RuntimeError("a loader worker did not report its position; retry the save")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        want = {"rank": self.rank, "world_size": self.world_size, "num_workers": self.cfg.num_workers}
        got = {k: state.get(k) for k in want}
        if got != want:
            raise ValueError(f"the checkpoint's data position was saved as {got}, this run is {want}: resume with the "
                             f"save's data-parallel size and data.num_workers")
        fp = self.manifest.get("fingerprint")
        if state.get("shards_fingerprint") != fp:
            raise ValueError(f"the checkpoint was trained on other shards (fingerprint "
                             f"{state.get('shards_fingerprint')}"
                             f", {self.cfg.shards} has {fp}): resume on the same data.shards, or start a new run from "
                             f"its weights with init.from_checkpoint")
        self.ledger.load_state_dict(state["ledger"])
        self.loader.restore_state_rank(state["energon"])
        self.batches_taken = int(state.get("batches_taken", 0))

    # ---- accounting ----
    def report(self) -> list[dict[str, Any]]:
        return self.ledger.report()

    @property
    def stats(self) -> dict[str, int]:
        """Totals over epochs so far: trained, skipped:<reason>, note:<note>, tokens."""
        return dict(sorted(self.ledger.totals().items()))


def _our_stop(e: BaseException) -> str | None:
    """The message of the task encoder's own stop (see VLMTaskEncoder._skip) inside energon's wrapping, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, SystemError) and "were all skipped" in str(e):
            return str(e)
        e = e.__cause__ or e.__context__
    return None


def _fail_loudly(exc: Exception, sample: Any = None, sources: Any = None) -> None:
    """energon's error handler: our task encoder counts every sample it cannot use, so anything reaching energon's
    handler is a bug or broken data to stop on, never a silent skip."""
    where = f" (sample {sources})" if sources else ""
    raise RuntimeError(f"loader failure{where}: {type(exc).__name__}: {exc}") from exc


def _startup_race(loader, state) -> bool:
    """True when a worker answered the position query before storing its first position (energon 7.4 answers
    'skip one' then), which would drop its first batch on resume."""
    if state is None or loader.num_workers == 0:
        return False
    counters = getattr(loader, "_worker_sample_counters", None)
    if counters is None:
        return False
    return any(c < 0 and getattr(ws, "offset", 0) != 0 for c, ws in zip(counters, state.worker_states))


def save_data_state(state: dict[str, Any], path: Path) -> None:
    """A rank's data position as plain containers + tensors (see :func:`load_data_state`)."""
    torch.save(_to_plain(state), path)


def load_data_state(path: Path) -> dict[str, Any]:
    """A rank's saved data position, read with torch.load(weights_only=True): energon's state objects were stored
    as plain containers tagged with their class, and only energon's own classes are rebuilt from them."""
    return _from_plain(torch.load(path, weights_only=True))


def _to_plain(obj: Any) -> Any:
    import dataclasses

    import numpy as np

    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor)):
        return obj
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj)), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__class__": _class_name(obj),
                "fields": {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict):
        return {"__class__": "dict" if type(obj) is dict else _class_name(obj),
                "items": [[_to_plain(k), _to_plain(v)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": [_to_plain(x) for x in obj]}
    raise TypeError(f"cannot store a {type(obj).__module__}.{type(obj).__qualname__} in a data position")


def _class_name(obj: Any) -> str:
    cls = type(obj)
    if not cls.__module__.startswith("megatron.energon."):
        raise TypeError(f"unexpected {cls.__module__}.{cls.__qualname__} in energon's loader state")
    return f"{cls.__module__}:{cls.__qualname__}"


def _from_plain(obj: Any) -> Any:
    import dataclasses
    import importlib

    if not isinstance(obj, dict):
        return obj
    if "__tuple__" in obj:
        return tuple(_from_plain(x) for x in obj["__tuple__"])
    if "__list__" in obj:
        return [_from_plain(x) for x in obj["__list__"]]
    if "__ndarray__" in obj:
        return obj["__ndarray__"].numpy().astype(obj["dtype"], copy=False)
    name = obj.get("__class__")
    if name == "dict":
        return {_from_plain(k): _from_plain(v) for k, v in obj["items"]}
    module, _, qual = str(name).partition(":")
    if not module.startswith("megatron.energon."):
        raise ValueError(f"data position holds a {name!r}, which is not one of energon's state classes")
    cls = importlib.import_module(module)
    for part in qual.split("."):
        cls = getattr(cls, part)
    if "items" in obj:
        return cls({_from_plain(k): _from_plain(v) for k, v in obj["items"]})
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"data position holds a {name!r}, which is not an energon state dataclass")
    inst = cls.__new__(cls)
    for k, v in obj["fields"].items():
        object.__setattr__(inst, k, _from_plain(v))
    return inst
