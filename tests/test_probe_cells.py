"""benchmarks/probe_features.py's per-cell helpers: the thin (primal) ridge equals the dual one,
objects map to the cells under their centres, taps are brought to one grid."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "probe_features.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("probe_features", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_primal_eig_gives_the_dual_ridge_predictions(probe):
    rng = np.random.default_rng(0)
    Z_tr, Z_te = rng.standard_normal((60, 8)), rng.standard_normal((20, 8))
    Y = np.eye(3)[rng.integers(0, 3, 60)]
    K_tr, K_te = Z_tr @ Z_tr.T, Z_te @ Z_tr.T
    dual, lam_d, loo_d = probe.ridge_probe(K_tr, K_te, Y)
    c = float(np.mean(np.diag(K_tr)))
    thin, lam_p, loo_p = probe.ridge_probe(None, K_te, Y, eig=probe.primal_eig(Z_tr, c))
    assert (lam_d, loo_d) == pytest.approx((lam_p, loo_p), rel=1e-9)
    np.testing.assert_allclose(thin, dual, rtol=1e-8, atol=1e-10)


def test_object_cells_are_under_the_centres(probe):
    scene = {"objects": [{"x": 10.0, "y": 120.0}, {"x": 64.0, "y": 63.9}, {"x": 127.9, "y": 0.0}]}
    assert probe.object_cells(scene, 128, 4) == [(3, 0), (1, 2), (0, 3)]
    assert probe.object_cells(scene, 128, 5) == [(4, 0), (2, 2), (0, 4)]


def test_cell_map_pools_finer_and_upsamples_coarser_taps(probe):
    fine = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).reshape(2, 3, 10, 10)
    coarse = torch.arange(2 * 4 * 5 * 5, dtype=torch.float32).reshape(2, 4, 5, 5)
    out = {"block10": fine, "grid": coarse}
    m5 = probe.cell_map(out, ("block10", "grid"), 5)
    assert m5.shape == (2, 7, 5, 5)
    assert m5[1, 2, 3, 4] == fine[1, 2, 6:8, 8:10].mean()
    assert torch.equal(m5[:, 3:], coarse)
    m10 = probe.cell_map(out, ("block10", "grid"), 10)
    assert m10.shape == (2, 7, 10, 10)
    assert torch.equal(m10[:, :3], fine) and m10[0, 5, 7, 3] == coarse[0, 2, 3, 1]
    c = probe.CellCandidate(160, ("block10", "grid"), 32, 256)
    assert (c.side, c.raw_dim, c.name) == (5, 1392, "160px block10+grid 5x5 pca256")
