"""The energon dataset type of our shard folders (named in their .nv-meta/dataset.yaml).

energon's CrudeWebdataset, with one change: samples are split over data-parallel ranks first, each rank's share
differing from another's by at most one sample, and then over that rank's loader workers. (energon 7.4 splits over
all ranks x workers at once, +-1 per worker, so with a worker count that is not a power of two ranks can differ by
several samples per epoch.)
"""

from __future__ import annotations

from typing import Sequence

from megatron.energon import CrudeWebdataset, WorkerConfig


def balanced_offsets(start: int, end: int, world_size: int, rank: int, num_workers: int) -> list[int]:
    """Sample offsets [w0 start, w1 start, ..., end] of one rank's workers: ranks +-1 sample, workers +-1 in a rank."""
    total = end - start
    per_rank, extra = divmod(total, world_size)
    r_start = start + rank * per_rank + min(rank, extra)
    r_size = per_rank + (1 if rank < extra else 0)
    per_worker, w_extra = divmod(r_size, num_workers)
    offsets = [r_start]
    for w in range(num_workers):
        offsets.append(offsets[-1] + per_worker + (1 if w < w_extra else 0))
    return offsets


class EcomCrudeWebdataset(CrudeWebdataset):
    @classmethod
    def split_samples_to_workers(cls, start_samples: int, end_samples: int, worker_config: WorkerConfig, *,
                                 rotation_offset: int = 0) -> Sequence[int]:
        return balanced_offsets(start_samples, end_samples, worker_config.world_size, worker_config.rank,
                                max(1, worker_config.num_workers))
