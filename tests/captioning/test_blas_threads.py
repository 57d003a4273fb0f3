"""The solver's per-epoch BLAS thread race (BlasThreads): the choice, the limit, the log."""

from __future__ import annotations

import numpy as np
import pytest
from captioning_helpers import make_data
from threadpoolctl import threadpool_info

from captionlab.captioning import CaptioningRNN, CaptioningSolver
from captionlab.captioning.solver import BlasThreads


def _blas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def _race(times: dict[int, float], cores: int = 4) -> int | None:
    """Run an 'auto' epoch's trial with step j taking times[threads]; the choice."""
    b = BlasThreads("auto")
    b.cores = cores
    b.start_epoch()
    for j in range(1, len(BlasThreads.TRIAL) + 1):
        n = BlasThreads.TRIAL[j - 1] or cores
        b.record(j, times[n] * (1.0 + 0.01 * j))
    return b.chosen


def test_the_faster_arm_is_chosen():
    assert _race({1: 0.5, 4: 3.6}) == 1  # busy machine: one thread
    assert _race({1: 0.5, 4: 0.3}) == 4  # quiet machine: all cores
    b = BlasThreads("auto")
    b.start_epoch()
    assert b.chosen is None  # nothing chosen before the trial
    b.record(0, 1.0)  # step 0 is never timed
    assert b._times == {1: [], b.cores: []}


def test_fixed_and_none_settings():
    b = BlasThreads(2)
    b.start_epoch()
    assert b.chosen == 2
    b.record(1, 0.1)  # a fixed count is never raced
    assert b.chosen == 2
    b = BlasThreads(None)
    b.start_epoch()
    assert b.chosen is None
    before = _blas_threads()
    with b.limit(3):
        assert _blas_threads() == before  # None leaves BLAS as it is
    for bad in (0, -1, "fast", 1.5):
        with pytest.raises(ValueError, match="blas_threads"):
            BlasThreads(bad)


@pytest.mark.skipif(not _blas_threads(), reason="NumPy's BLAS is not visible to threadpoolctl")
def test_limit_sets_the_count_for_the_step_and_restores_it():
    before = _blas_threads()
    b = BlasThreads("auto")
    b.cores = 2
    b.start_epoch()
    with b.limit(1):  # trial step 1: one thread
        assert _blas_threads() == {1}
    assert _blas_threads() == before
    b.chosen = 1
    with b.limit(10):  # after the trial: the choice
        assert _blas_threads() == {1}
    assert _blas_threads() == before


def test_the_epoch_log_says_the_count_and_training_is_unchanged():
    data = make_data()

    def run(threads):
        model = CaptioningRNN(data["word_to_idx"], input_dim=data["train_features"].shape[1],
                              wordvec_dim=6, hidden_dim=8, dtype=np.float64, seed=0)  # fmt: skip
        records = []
        solver = CaptioningSolver(
            model, data, update_rule="adam", num_epochs=2, batch_size=4,
            optim_config={"learning_rate": 1e-2}, verbose=False, seed=0,
            metric=lambda h, r: 0.0, blas_threads=threads,
            on_epoch_end=lambda s, rec: records.append(rec["blas_threads"]),
        )  # fmt: skip
        return solver.train().loss_history, records

    fixed, rec_fixed = run(1)
    auto, rec_auto = run("auto")
    untouched, rec_none = run(None)
    assert rec_fixed == [1, 1]
    assert rec_none == [None, None]
    cores = BlasThreads("auto").cores
    assert all(r in ({1, cores} if cores > 1 else {None}) for r in rec_auto)
    # tiny products: the thread count cannot change a float64 result here
    np.testing.assert_allclose(auto, fixed, rtol=1e-12)
    np.testing.assert_allclose(untouched, fixed, rtol=1e-12)
