"""derive_seed: the one home of a run's seeds."""
import pytest

from advnlp.cli.distributed import STREAMS, derive_seed


def test_data_order_and_augmentation_samples_keep_their_earlier_seeds():
    # The values of advnlp 0.1's hand-written mixes: the same --seed, the same batches.
    for seed in (0, 42, 7):
        for epoch in (0, 1, 5):
            assert derive_seed(seed, "epoch-order", epoch) == seed * 1_000_003 + epoch
            assert derive_seed(seed, "augment-sample", epoch) == seed * 1_000_003 + 500_009 + epoch


def test_streams_and_counters_give_distinct_seeds():
    seeds = [derive_seed(42, purpose, *counters)
             for purpose, (_, names) in STREAMS.items()
             for counters in {(0,) * len(names), (1,) * len(names), (2,) + (0,) * (len(names) - 1)}]
    assert len(set(seeds)) == len(seeds) == len(STREAMS) * 3
    assert derive_seed(42, "dropout-resumed", 1, 2, 3) != derive_seed(42, "dropout-resumed", 3, 2, 1)
    with pytest.raises(TypeError, match="rank"):
        derive_seed(42, "dropout", 1, 2)
