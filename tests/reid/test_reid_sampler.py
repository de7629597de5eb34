"""P x K structure, reproducibility and the distributed split of RandomIdentitySampler."""

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from denoiserep.reid import RandomIdentitySampler

# 7 identities with 1..7 images each (pid p has p + 1 images); dataset index order mixed.
PIDS = [p for p in range(7) for _ in range(p + 1)][::-1]


def batches_of(indices, size):
    assert len(indices) % size == 0
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def test_every_batch_is_p_identities_by_k_instances():
    sampler = RandomIdentitySampler(PIDS, batch_size=6, num_instances=2, seed=0)
    indices = list(sampler)
    assert len(indices) == len(sampler) > 0
    for batch in batches_of(indices, 6):
        groups = [batch[i : i + 2] for i in range(0, 6, 2)]  # identity-major: P groups of K
        group_pids = [{PIDS[i] for i in g} for g in groups]
        assert all(len(s) == 1 for s in group_pids)
        assert len(set().union(*group_pids)) == 3  # P = 3 distinct identities


def test_small_identity_sampled_with_replacement():
    # pid 0 has a single image (dataset index 27): its K = 3 slots repeat that image.
    sampler = RandomIdentitySampler(PIDS, batch_size=6, num_instances=3, seed=0)
    single = PIDS.index(0)
    seen = [b for b in batches_of(list(sampler), 6) if single in b]
    for epoch in range(1, 20):  # pid 0 may miss an epoch: look over several
        sampler.set_epoch(epoch)
        seen += [b for b in batches_of(list(sampler), 6) if single in b]
    assert seen
    assert all(Counter(b)[single] == 3 for b in seen)


def test_indices_within_an_identity_are_not_repeated_when_enough_images():
    sampler = RandomIdentitySampler(PIDS, batch_size=4, num_instances=2, seed=1)
    indices = [i for i in sampler if PIDS[i] >= 1]  # identities with >= K images
    assert len(indices) == len(set(indices))


def test_epochs_are_reproducible_and_differ():
    a = RandomIdentitySampler(PIDS, batch_size=4, num_instances=2, seed=5)
    b = RandomIdentitySampler(PIDS, batch_size=4, num_instances=2, seed=5)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    second = list(a)
    assert second != first
    a.set_epoch(0)
    assert list(a) == first


def test_distributed_ranks_share_each_global_batch():
    kw = {"pids": PIDS, "batch_size": 8, "num_instances": 2, "seed": 3}
    whole = RandomIdentitySampler(**kw)
    ranks = [RandomIdentitySampler(**kw, num_replicas=2, rank=r) for r in range(2)]
    global_batches = batches_of(list(whole), 8)
    per_rank = [batches_of(list(s), 4) for s in ranks]
    assert len(ranks[0]) == len(ranks[1]) == len(whole) // 2
    for g, r0, r1 in zip(global_batches, *per_rank, strict=True):
        assert r0 + r1 == g  # rank r takes identities r*P/R .. of the global batch
        assert len({PIDS[i] for i in r0}) == 2 and not {PIDS[i] for i in r0} & {PIDS[i] for i in r1}


def test_with_dataloader():
    sampler = RandomIdentitySampler(PIDS, batch_size=4, num_instances=2)
    loader = DataLoader(torch.arange(len(PIDS)), batch_size=4, sampler=sampler, drop_last=True)
    for batch in loader:
        counts = Counter(PIDS[i] for i in batch.tolist())
        assert sorted(counts.values()) == [2, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 7, "num_instances": 2}, "multiple of num_instances"),
        ({"batch_size": 32, "num_instances": 4}, "fewer than the 8"),
        ({"batch_size": 6, "num_instances": 2, "num_replicas": 2, "rank": 0}, "divisible"),
        ({"batch_size": 4, "num_instances": 2, "num_replicas": 2, "rank": 2}, "rank"),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomIdentitySampler(PIDS, **kwargs)


def test_numpy_pids_accepted():
    sampler = RandomIdentitySampler(np.array(PIDS), batch_size=4, num_instances=2)
    assert all(isinstance(i, int) for i in sampler)
