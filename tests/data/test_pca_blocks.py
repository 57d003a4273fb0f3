"""PCA of more rows than fit in memory: read in blocks, the same components as in memory."""

from __future__ import annotations

import numpy as np
import pytest

from captionlab.data.pca import fit_pca, fit_pca_rows
from captionlab.errors import UserError


def _data(N, R, rank=6, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.linspace(10, 3, rank)[None, :]
    low = (rng.standard_normal((N, rank)) * scales) @ rng.standard_normal((rank, R))
    return (low + 0.01 * rng.standard_normal((N, R)) + 5).astype(np.float32)


@pytest.mark.parametrize("R", [40, 2100])  # covariance (exact) and randomized block paths
def test_blocks_match_the_in_memory_fit(R):
    x = _data(300, R)
    rows = np.arange(10, 290)
    reads = []

    def read(r):
        reads.append(len(r))
        return x[r]

    whole = fit_pca(x[rows], 4)
    blocked = fit_pca_rows(read, rows, R, 4, max_bytes=1, block_bytes=50 * 4 * R)
    assert max(reads) < len(rows)  # never all rows at once
    np.testing.assert_allclose(blocked.mean, whole.mean, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(blocked.components, whole.components, atol=2e-3)
    np.testing.assert_allclose(blocked.explained_variance, whole.explained_variance, rtol=1e-3)
    in_memory = fit_pca_rows(read, rows, R, 4)
    np.testing.assert_array_equal(in_memory.components, whole.components)


def test_too_few_rows_is_a_user_error():
    with pytest.raises(UserError, match="PCA to 5 dimensions needs at least 5 images"):
        fit_pca_rows(lambda r: np.zeros((len(r), 8)), np.arange(3), 8, 5)


def test_tall_qr_is_an_orthonormal_basis_of_the_same_span():
    from captionlab.data.pca import _tall_qr

    rng = np.random.default_rng(1)
    a = rng.standard_normal((1000, 30))
    q = _tall_qr(a.copy(), block_rows=64)  # 15 blocks, the last one merged
    np.testing.assert_allclose(q.T @ q, np.eye(30), atol=1e-12)
    np.testing.assert_allclose(q @ (q.T @ a), a, atol=1e-10)
