"""P x K identity sampler for metric-learning losses (triplet loss with hard mining).

Each epoch follows the torchreid / TransReID recipe: every identity's images are shuffled
(identities with fewer than K images are sampled with replacement up to K) and cut into
chunks of K (an incomplete last chunk is dropped); batches are then formed by drawing P
distinct identities that still have chunks and taking one chunk from each, until fewer
than P identities are left. A batch is identity-major: P groups of K consecutive indices.

Distributed rule: the global batch is P x K = batch_size and every rank builds the same
batch list (same seed and epoch). Rank r of R takes identities r*P/R .. (r+1)*P/R - 1 of
every global batch, i.e. a contiguous (P/R) x K slice, so P must be divisible by R and each
rank's DataLoader uses batch_size // R.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


class RandomIdentitySampler(Sampler[int]):
    """Yield dataset indices in batches of P identities x K instances.

    Args:
        pids: the identity of every dataset item, in dataset order.
        batch_size: global batch size P x K.
        num_instances: K, images per identity in a batch.
        seed: base seed; the epoch's order depends only on (seed, epoch).
        num_replicas, rank: distributed split (default: the initialised process group,
            else a single replica).
    """

    def __init__(
        self,
        pids: Sequence[int],
        batch_size: int,
        num_instances: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if num_instances < 1 or batch_size < 1 or batch_size % num_instances != 0:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of "
                f"num_instances ({num_instances})"
            )
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        self.num_identities = batch_size // num_instances
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank {rank}, {num_replicas}")
        if self.num_identities % num_replicas != 0:
            raise ValueError(
                f"identities per batch ({self.num_identities} = batch_size / num_instances) "
                f"must be divisible by num_replicas ({num_replicas})"
            )
        by_pid: dict[int, list[int]] = {}
        for index, pid in enumerate(pids):
            by_pid.setdefault(int(pid), []).append(index)
        self.index_by_pid = {pid: np.asarray(ix) for pid, ix in sorted(by_pid.items())}
        if len(self.index_by_pid) < self.num_identities:
            raise ValueError(
                f"{len(self.index_by_pid)} identities, fewer than the {self.num_identities} "
                f"per batch (batch_size {batch_size} / num_instances {num_instances})"
            )
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose (reproducible) order the next iteration yields."""
        self.epoch = epoch

    def global_batches(self) -> list[np.ndarray]:
        """This epoch's global batches (arrays of batch_size indices), same on every rank."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        k = self.num_instances
        chunks: dict[int, list[np.ndarray]] = {}
        for pid, indices in self.index_by_pid.items():
            if len(indices) < k:
                indices = rng.choice(indices, size=k, replace=True)
            else:
                indices = rng.permutation(indices)
            chunks[pid] = [indices[s : s + k] for s in range(0, len(indices) - k + 1, k)]
        batches = []
        available = list(chunks)
        while len(available) >= self.num_identities:
            chosen = rng.choice(len(available), size=self.num_identities, replace=False)
            batches.append(np.concatenate([chunks[available[c]].pop() for c in chosen]))
            available = [pid for pid in available if chunks[pid]]
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[int]:
        share = self.batch_size // self.num_replicas
        for batch in self.global_batches():
            yield from batch[self.rank * share : (self.rank + 1) * share].tolist()

    def __len__(self) -> int:
        return len(self.global_batches()) * (self.batch_size // self.num_replicas)
