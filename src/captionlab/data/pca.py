"""PCA of pooled features: fitted on the training images, stored with the features and in
every checkpoint, so new images are projected exactly as the training images were.

Shapes: ``N`` images, ``R`` raw feature size, ``D`` components kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from captionlab.errors import UserError

__all__ = ["PCA", "fit_pca", "fit_pca_rows"]


@dataclass
class PCA:
    """``transform(x) = (x - mean) @ components / scale``: mean (R,), components (R, D)
    orthonormal, ``scale`` one number (1 for the pooled features; for the grid's cells, their
    RMS after projection on the cells the PCA was fitted on, so that stored values have unit
    RMS: a captioner's first layers, initialised for unit inputs, then start unsaturated)."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    scale: float = 1.0

    def transform(self, x: np.ndarray) -> np.ndarray:
        """x (M, R) -> (M, D) float32."""
        x = np.asarray(x, dtype=np.float32)
        R = self.components.shape[0]
        if x.ndim != 2 or x.shape[1] != R:
            raise ValueError(f"x must be (M, {R}) raw features, got {x.shape}")
        out = (x - self.mean) @ self.components  # (M, D)
        if self.scale != 1.0:
            out /= np.float32(self.scale)
        return out.astype(np.float32, copy=False)

    def with_unit_rms(self, x: np.ndarray) -> PCA:
        """This PCA with ``scale`` set to the RMS of ``transform(x)`` (x (M, R), e.g. the rows
        it was fitted on) at scale 1."""
        unscaled = PCA(self.mean, self.components, self.explained_variance)
        z = unscaled.transform(x)
        rms = float(np.sqrt(np.mean(np.square(z, dtype=np.float64))))
        return PCA(self.mean, self.components, self.explained_variance, rms if rms > 0 else 1.0)


def fit_pca(x: np.ndarray, k: int, seed: int = 0, method: str = "auto") -> PCA:
    """Principal components of x (N, R) -> PCA with the top ``k`` components.

    ``method="auto"``: ``"gram"`` when ``R <= 2048`` and ``N >= 2 R`` (the eigenvectors of
    the centred data's (R, R) Gram matrix, summed in float64: for many rows of few features,
    such as grid cells, about 9x less work than the SVD), else exact (SVD of the centred
    data) when ``min(N, R) <= 2048``, else a seeded randomized SVD; ``"gram"``,
    ``"exact"`` or ``"randomized"`` force one. The randomized one is Halko et al. 2011
    (4 power iterations, 32 extra columns), accurate for the leading components and
    deterministic. Each component's sign is fixed so that its largest-magnitude entry is
    positive. Needs ``N >= k`` rows.
    """
    x = np.asarray(x, dtype=np.float32)
    N, R = x.shape
    if not 1 <= k <= min(N, R):
        raise UserError(
            f"PCA to {k} dimensions needs at least {k} images and features to fit on, "
            f"got {N} images x {R} features; lower the PCA size or give more images"
        )
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)  # (R,)
    xc = x - mean  # (N, R)
    if method not in ("auto", "gram", "exact", "randomized"):
        raise ValueError(f"method must be 'auto', 'gram', 'exact' or 'randomized', got {method!r}")
    if method == "auto" and R <= 2048 and N >= 2 * R:
        method = "gram"
    if method == "gram":
        gram = np.zeros((R, R))
        for start in range(0, N, 4096):  # float64 products, a block of rows at a time
            block = xc[start : start + 4096].astype(np.float64)
            gram += block.T @ block
        evals, evecs = np.linalg.eigh(gram)  # ascending
        components = evecs[:, ::-1][:, :k]  # (R, k)
        s = np.sqrt(np.clip(evals[::-1][:k], 0, None))
    elif method == "exact" or (method == "auto" and min(N, R) <= 2048):
        _, s, vt = np.linalg.svd(xc.astype(np.float64), full_matrices=False)
        components = vt[:k].T  # (R, k)
        s = s[:k]
    else:
        rng = np.random.default_rng(seed)
        cols = min(k + 32, min(N, R))
        q = xc @ rng.standard_normal((R, cols), dtype=np.float32)  # (N, cols)
        for _ in range(4):
            q, _ = np.linalg.qr(q)
            q, _ = np.linalg.qr(xc.T @ q)  # (R, cols)
            q = xc @ q  # (N, cols)
        q, _ = np.linalg.qr(q)
        b = q.T @ xc  # (cols, R)
        _, s, vt = np.linalg.svd(b.astype(np.float64), full_matrices=False)
        components = vt[:k].T  # (R, k)
        s = s[:k]
    return _pca_from_svd(mean, components, s, N)


#: Training rows up to this many bytes are fitted in memory (:func:`fit_pca`); more are read
#: in blocks (:func:`fit_pca_rows`), so a store of any size fits in bounded memory.
PCA_IN_MEMORY_BYTES = 256 << 20
_BLOCK_BYTES = 64 << 20


def fit_pca_rows(
    read: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    R: int,
    k: int,
    seed: int = 0,
    max_bytes: int = PCA_IN_MEMORY_BYTES,
    block_bytes: int = _BLOCK_BYTES,
) -> PCA:
    """PCA of the rows ``rows`` (N,) of an (M, R) matrix read by ``read(rows) -> (K, R)``.

    When the N rows take at most ``max_bytes`` they are read at once and :func:`fit_pca`
    fits them (the numbers of every store of the shapes benchmark). Otherwise they are read
    in blocks of about ``block_bytes`` (64 MB), in several passes: for ``R <= 2048`` the
    covariance is accumulated and diagonalised (the exact components); else the same seeded
    randomized SVD as :func:`fit_pca`, each product with the centred data taken block by
    block. Memory is then one block plus ``(N, k + 32)`` floats, never ``(N, R)``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    N = rows.size
    if not 1 <= k <= min(N, R):
        raise UserError(
            f"PCA to {k} dimensions needs at least {k} images and features to fit on, "
            f"got {N} images x {R} features; lower the PCA size or give more images"
        )
    if N * R * 4 <= max_bytes:
        return fit_pca(read(rows), k, seed=seed)
    step = max(1, block_bytes // (4 * R))
    spans = [slice(i, min(i + step, N)) for i in range(0, N, step)]

    def blocks():
        for span in spans:
            yield span, np.asarray(read(rows[span]), dtype=np.float32)  # (B, R)

    total = np.zeros(R, np.float64)
    for _, x in blocks():
        total += x.sum(axis=0, dtype=np.float64)
    mean = (total / N).astype(np.float32)  # (R,)
    if R <= 2048:
        cov = np.zeros((R, R), np.float64)
        for _, x in blocks():
            xc = (x - mean).astype(np.float64)
            cov += xc.T @ xc  # (R, R)
        eigvals, eigvecs = np.linalg.eigh(cov)
        order = np.argsort(eigvals)[::-1][:k]
        components = eigvecs[:, order]  # (R, k)
        s = np.sqrt(np.clip(eigvals[order], 0, None))
    else:
        rng = np.random.default_rng(seed)
        cols = min(k + 32, min(N, R))
        q = np.empty((N, cols), np.float32)
        omega = rng.standard_normal((R, cols), dtype=np.float32)
        for span, x in blocks():
            q[span] = (x - mean) @ omega  # (B, cols)
        for _ in range(4):
            _tall_qr(q)
            z = np.zeros((R, cols), np.float32)
            for span, x in blocks():
                z += (x - mean).T @ q[span]  # (R, cols)
            z, _ = np.linalg.qr(z)
            for span, x in blocks():
                q[span] = (x - mean) @ z
        _tall_qr(q)
        b = np.zeros((cols, R), np.float32)
        for span, x in blocks():
            b += q[span].T @ (x - mean)  # (cols, R)
        _, s, vt = np.linalg.svd(b.astype(np.float64), full_matrices=False)
        components = vt[:k].T  # (R, k)
        s = s[:k]
    return _pca_from_svd(mean, components, s, N)


def _pca_from_svd(mean: np.ndarray, components: np.ndarray, s: np.ndarray, N: int) -> PCA:
    """The PCA of N rows from their mean, the top right singular vectors (R, k) of the
    centred rows and the singular values (k,): each component's sign fixed (its largest
    entry positive) so that fits agree across runs, the variances ``s**2 / (N - 1)``."""
    k = components.shape[1]
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(k)])
    signs[signs == 0] = 1
    var = (s**2) / max(N - 1, 1)
    return PCA(mean, (components * signs).astype(np.float32), var.astype(np.float32))


def _tall_qr(q: np.ndarray, block_rows: int = 8192) -> np.ndarray:
    """Replace the columns of a tall q (N, c) by an orthonormal basis of their span, in place.

    ``np.linalg.qr`` of an (N, c) matrix needs about five times its memory; this TSQR (the QR
    of each block of rows, then of their stacked R factors) needs q itself plus one block.
    """
    N, c = q.shape
    step = max(block_rows, c)
    starts = list(range(0, N, step))
    if len(starts) > 1 and N - starts[-1] < c:  # a last block shorter than c joins the one before
        starts.pop()
    spans = [slice(a, b) for a, b in zip(starts, [*starts[1:], N], strict=True)]
    factors = []
    for span in spans:
        qb, rb = np.linalg.qr(q[span])  # (B, c), (c, c)
        q[span] = qb
        factors.append(rb)
    q2, _ = np.linalg.qr(np.concatenate(factors))  # (blocks * c, c)
    for i, span in enumerate(spans):
        q[span] = q[span] @ q2[i * c : (i + 1) * c]
    return q
