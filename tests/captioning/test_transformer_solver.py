"""CaptioningSolver with a CaptioningTransformer: validation in evaluation mode, the default
"auto" monitor (the validation metric through greedy decoding), grids from arrays."""

import numpy as np
import pytest
from captioning_helpers import make_data

from captionlab.captioning import CaptioningSolver, CaptioningTransformer
from captionlab.errors import DataError


def _grid_data(seed=0, L=4):
    """The helpers' data dict with (M, L, D) grids instead of pooled vectors."""
    data = make_data(seed=seed)
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        M, D = data[f"{split}_features"].shape
        data[f"{split}_features"] = rng.standard_normal((M, L, D))
    return data


class _ModeSpy(CaptioningTransformer):
    """Records the mode of every loss call."""

    modes: list[bool]

    def loss(self, features, captions, **kw):
        self.modes.append(self.training)
        return super().loss(features, captions, **kw)


@pytest.mark.parametrize("grid", [True, False], ids=["grid", "pooled"])
def test_solver_trains_a_transformer_and_validates_in_eval_mode(grid):
    data = _grid_data() if grid else make_data()
    D = data["train_features"].shape[-1]
    model = _ModeSpy(data["word_to_idx"], D, 16, 2, 1, dropout=0.2, seed=0, grid=grid)
    model.modes = []
    assert model.feature_shape == ((None, D) if grid else (D,))
    solver = CaptioningSolver(
        model, data, update_rule="adam", optim_config={"learning_rate": 1e-2},
        batch_size=10, num_epochs=2, verbose=False, seed=0,
    )  # fmt: skip
    solver.train()
    assert solver.train_loss_history[1] < solver.train_loss_history[0]
    assert len(solver.val_metric_history) == 2  # "auto" monitors the validation metric
    assert solver.best_epoch in (1, 2)
    assert model.training  # back in training mode after each validation
    # 4 training steps per epoch in training mode, then the validation loss in eval mode
    assert model.modes == [True] * 4 + [False] + [True] * 4 + [False]


def test_solver_rejects_the_other_kind_of_features():
    data = make_data()  # pooled
    model = CaptioningTransformer(data["word_to_idx"], 12, 16, 2, 1, seed=0, grid=True)
    with pytest.raises(DataError, match=r"train_features'\] must be a \(M, \?, 12\) array"):
        CaptioningSolver(model, data, verbose=False)
