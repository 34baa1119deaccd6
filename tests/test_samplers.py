from tireid_core.data.samplers import identity_batches, random_batches, rank_slice


def test_random_batches_depend_only_on_seed_and_epoch():
    a = random_batches(10, 3, seed=1, epoch=0)
    assert a == random_batches(10, 3, seed=1, epoch=0)
    assert a != random_batches(10, 3, seed=1, epoch=1)
    assert [len(b) for b in a] == [3, 3, 3]  # drop_last
    assert sorted(i for b in random_batches(10, 3, 1, 0, drop_last=False) for i in b) == list(range(10))


def test_identity_batches_hold_p_ids_times_k():
    pids = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3]
    batches = identity_batches(pids, ids_per_batch=2, per_id=2, seed=0, epoch=0)
    assert len(batches) == 2
    for b in batches:
        ids = [pids[i] for i in b]
        assert len(b) == 4 and len(set(ids)) == 2 and all(ids.count(p) == 2 for p in set(ids))


def test_rank_slices_partition_a_batch():
    batch = [5, 1, 9, 4, 7, 2]
    parts = [rank_slice(batch, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(batch) and parts[0] == [5, 4]
