"""The energon loader: exact resume at any workers x ranks x kill point, every sample accounted, balanced ranks.

The loader runs in this process (both data-parallel ranks of DP=2 side by side, as energon shards them); a "kill"
is: take N batches, save the rank's position to a file, drop the loader, build a new one from the same settings,
restore, go on. The resumed stream must equal the uninterrupted one, batch for batch and sample for sample.
"""

import json
import shutil

import pytest
import torch

from ecomvlm.data_modules.config import DataConfig
from ecomvlm.data_modules.loader import VLMDataModule, load_data_state, rank_range, save_data_state
from ecomvlm.data_modules.preprocess import ImageSpec
from ecomvlm.data_modules.shards import ShardConfig, make_shards

SPEC = ImageSpec(mode="fixed", image_size=32, patch_size=8, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)  # 16 tokens
MAX_LEN = 320
N_LONG = 3  # samples that only the loader can tell are too long (their text)


@pytest.fixture(scope="module", autouse=True)
def fast_worker_shutdown():
    """torch joins each loader worker with a 5 s status interval; tests build many loaders."""
    import torch.utils.data._utils as data_utils

    old, data_utils.MP_STATUS_CHECK_INTERVAL = data_utils.MP_STATUS_CHECK_INTERVAL, 0.3
    yield
    data_utils.MP_STATUS_CHECK_INTERVAL = old


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, synth_data):
    """57 samples in shards of 20/20/17; N_LONG of them too long for MAX_LEN (skipped by the loader, counted)."""
    d = tmp_path_factory.mktemp("loader")
    shutil.copytree(synth_data / "images", d / "images")
    recs = json.loads((synth_data / "train" / "stage3_instruct.json").read_text())[: 57 - N_LONG]
    for i in range(N_LONG):
        long = dict(recs[i], id=f"long-{i}")
        long["conversations"] = [recs[i]["conversations"][0], {"from": "gpt", "value": "word " * 400}]
        recs.insert(10 + 20 * i, long)
    (d / "data.json").write_text(json.dumps(recs))
    make_shards(ShardConfig([d / "data.json"], d / "shards", image_root=d, samples_per_shard=20, workers=1))
    return d / "shards"


def _dm(tok, shards, rank=0, world=1, **kw):
    cfg = DataConfig(shards=str(shards), **{"max_seq_length": MAX_LEN, "pack_window": 6, "shuffle_buffer": 5,
                                            "shuffle_slice": 7, "micro_batch_size": 2, "num_workers": 0, **kw})
    return VLMDataModule(cfg, tok, "chatml", SPEC, tok.convert_tokens_to_ids("<image>"), rank=rank, world_size=world,
                         seed=11)


def _take(it, n):
    return [(tuple(b["sample_index"]), tuple(b["skipped"]), int(b["input_ids"].sum()), tuple(b["input_ids"].shape))
            for b in (next(it) for _ in range(n))]


def _epoch_batches(dm, it, limit=200) -> tuple[list, int, int]:
    """The stream until this rank's first epoch is complete, + the batch after which a worker's range ran dry."""
    from ecomvlm.data_modules.energon_dataset import balanced_offsets

    nw = max(1, dm.cfg.num_workers)
    offs = balanced_offsets(0, dm.total, dm.world_size, dm.rank, nw)
    ranges = [set(range(offs[w], offs[w + 1])) for w in range(nw)]
    stream, seen, dry = [], set(), None
    while len(stream) < limit:
        stream += _take(it, 1)
        seen |= set(stream[-1][0]) | {i for i, _ in stream[-1][1]}
        if dry is None and any(r <= seen for r in ranges):
            dry = len(stream)
        if dm.report()[0]["complete"]:
            return stream, len(stream), dry
    raise AssertionError("the first epoch did not complete")


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("workers", [0, 1, 2, 4])
def test_resume_is_exact_at_any_kill_point(tiny_tokenizers, shard_dir, tmp_path, workers, world):
    tok = tiny_tokenizers["chatml"]
    for rank in range(world):
        ref_dm = _dm(tok, shard_dir, rank, world, num_workers=workers)
        it = ref_dm.batches()
        ref, epoch_len, dry = _epoch_batches(ref_dm, it)
        ref += _take(it, 6)  # into the second epoch
        del it, ref_dm
        kills = {"early": 1, "middle": epoch_len // 2, "a worker ran dry": dry, "across the epoch end": epoch_len - 1}
        for what, n in kills.items():
            first = _dm(tok, shard_dir, rank, world, num_workers=workers)
            it = first.batches()
            got = _take(it, n)
            save_data_state(first.state_dict(), tmp_path / "pos.pt")
            del it, first
            again = _dm(tok, shard_dir, rank, world, num_workers=workers)
            again.load_state_dict(load_data_state(tmp_path / "pos.pt"))
            got += _take(again.batches(), len(ref) - n)
            assert got == ref, f"workers={workers} world={world} rank={rank}: resume after {n} batches ({what})"
            del again


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("micro", [1, 2, 4])
@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_is_trained_or_counted(tiny_tokenizers, shard_dir, micro, pack, workers):
    """Per epoch and rank: trained + skipped (by reason) = input, whatever the micro-batch, packing or workers;
    the good samples are each trained exactly once, the too-long ones each skipped once."""
    tok = tiny_tokenizers["chatml"]
    world = 2
    for rank in range(world):
        dm = _dm(tok, shard_dir, rank, world, micro_batch_size=micro, pack=pack, num_workers=workers)
        it = dm.batches()
        trained, skipped = [], []
        while not (dm.report() and dm.report()[0]["complete"]):
            b = next(it)
            trained += b["sample_index"]
            skipped += list(b["skipped"])
            assert b["input_ids"].shape[0] == micro  # full micro-batches only: a partial one takes the next epoch's
        row = dm.report()[0]
        start, end = dm.start, dm.end
        assert row["input"] == end - start
        assert row["trained"] + sum(row["skipped"].values()) == row["input"] and row["pending"] == 0
        long_here = {i for i, reason in skipped if reason == "too_long"}
        assert set(trained) | long_here == set(range(start, end)) and not long_here & set(trained)
        assert row["trained"] == end - start - len(long_here)
        assert row["skipped"] == ({"too_long": len(long_here)} if long_here else {})
        del it, dm


def test_too_long_samples_are_found_on_every_rank_together(tiny_tokenizers, shard_dir):
    tok = tiny_tokenizers["chatml"]
    skipped, epoch0 = set(), 0
    for rank in range(2):
        dm = _dm(tok, shard_dir, rank, 2)
        it = dm.batches()
        while not (dm.report() and dm.report()[0]["complete"]):
            skipped |= {i for i, reason in next(it)["skipped"] if reason == "too_long"}
        epoch0 += dm.report()[0]["skipped"].get("too_long", 0)
    assert len(skipped) == N_LONG == epoch0


@pytest.mark.parametrize("world, workers", [(2, 0), (2, 2), (4, 1), (3, 2), (3, 4)])
def test_ranks_get_samples_not_whole_shards(tiny_tokenizers, shard_dir, world, workers):
    """57 samples in 3 shards over 2-4 ranks: shares differ by at most one sample (less than a micro-batch) and
    cover every sample once; the loader reads exactly its rank's share."""
    shares = [rank_range(57, r, world, workers) for r in range(world)]
    dm = _dm(tiny_tokenizers["chatml"], shard_dir, world - 1, world, num_workers=workers)
    it, seen = dm.batches(), set()
    while not (dm.report() and dm.report()[0]["complete"]):
        b = next(it)
        seen |= set(b["sample_index"]) | {i for i, _ in b["skipped"]}
    assert seen == set(range(*shares[-1]))
    sizes = [b - a for a, b in shares]
    assert max(sizes) - min(sizes) <= 1
    assert shares[0][0] == 0 and shares[-1][1] == 57 and all(a[1] == b[0] for a, b in zip(shares, shares[1:]))


def test_each_rank_checkpoints_its_own_position(tiny_tokenizers, shard_dir, tmp_path):
    """DP=2: rank 1's position is its own (restoring rank 0's position on rank 1 is refused)."""
    tok = tiny_tokenizers["chatml"]
    r0, r1 = _dm(tok, shard_dir, 0, 2), _dm(tok, shard_dir, 1, 2)
    _take(r0.batches(), 3)
    _take(r1.batches(), 5)
    s0, s1 = r0.state_dict(), r1.state_dict()
    assert s0["ledger"]["start"] == 0 and s1["ledger"]["start"] == r1.start > 0
    with pytest.raises(ValueError, match="saved as .*'rank': 0.*this run is .*'rank': 1"):
        _dm(tok, shard_dir, 1, 2).load_state_dict(s0)
    with pytest.raises(ValueError, match="data.num_workers"):
        _dm(tok, shard_dir, 0, 2, num_workers=1).load_state_dict(s0)


def test_the_position_file_holds_no_arbitrary_objects(tiny_tokenizers, shard_dir, tmp_path):
    """Positions are read with torch.load(weights_only=True); a class outside energon is refused."""
    from ecomvlm.data_modules.loader import _from_plain

    tok = tiny_tokenizers["chatml"]
    dm = _dm(tok, shard_dir, num_workers=2)
    _take(dm.batches(), 2)
    save_data_state(dm.state_dict(), tmp_path / "p.pt")
    assert load_data_state(tmp_path / "p.pt")["ledger"]["end"] == 57
    with pytest.raises(ValueError, match="not one of energon's state classes"):
        _from_plain({"__class__": "os:system", "fields": {}})


def test_changed_shards_are_refused_on_resume(tiny_tokenizers, shard_dir, tmp_path):
    tok = tiny_tokenizers["chatml"]
    dm = _dm(tok, shard_dir)
    _take(dm.batches(), 2)
    state = dm.state_dict()
    state["shards_fingerprint"] = "0" * 16
    with pytest.raises(ValueError, match="trained on other shards"):
        _dm(tok, shard_dir).load_state_dict(state)


def test_a_loader_whose_every_sample_is_skipped_stops_with_the_reason(tiny_tokenizers, shard_dir):
    tok = tiny_tokenizers["chatml"]
    dm = _dm(tok, shard_dir, max_seq_length=20)
    with pytest.raises(RuntimeError, match="all skipped .*too_long"):
        next(dm.batches())


def test_batches_carry_tensors_the_model_takes(tiny_tokenizers, shard_dir):
    tok = tiny_tokenizers["chatml"]
    b = next(_dm(tok, shard_dir, num_workers=2).batches())
    assert b["input_ids"].dtype == torch.long and b["pixel_values"].shape[1:] == (3, 32, 32)
    assert b["input_ids"].shape[1] <= MAX_LEN and b["n_samples"] == len(b["sample_index"])
