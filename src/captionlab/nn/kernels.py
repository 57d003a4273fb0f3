"""The element-wise work of the recurrent layers: readable NumPy kernels, and the switch to
their fused numba twins.

The layers do their matrix products with NumPy (BLAS) and hand everything between the
products to a *kernel*: one step's gate arithmetic, the softmax of the loss, the scatter of
the embedding's backward (and, for beam search, the best candidates of each row). Each
kernel exists twice, with the same name and signature:

* here, in plain NumPy: several passes over memory on one thread, easy to read; this is
  the reference the tests hold the fast kernels to (1e-6 relative in float32, 1e-12 in
  float64);
* in :mod:`captionlab.nn.kernels_numba`: one fused pass, split over the cores, compiled by
  numba on first use and cached on disk.

Which set the layers use:

* the environment variable ``CAPTIONLAB_KERNELS`` = ``numba`` (the default) or ``numpy``,
  read once, when this module is imported;
* :func:`set_kernels` and the context manager :func:`use_kernels` (both exported from
  :mod:`captionlab.nn`) change it in a running program: ``with nn.use_kernels("numpy"): ...``.

Nothing is compiled or even imported at ``import captionlab``: numba is imported the first
time a layer asks for its kernels. If numba is missing, or a kernel fails to compile, the
layers fall back to these NumPy kernels with one ``RuntimeWarning`` and carry on.

Threads: the numba kernels use numba's thread count (``numba.set_num_threads``, or
:func:`set_num_threads` here; all cores by default), and a call with less than
:data:`PARALLEL_MIN_WORK` elements runs on the calling thread alone. Unless
``NUMBA_THREADING_LAYER`` is set, numba's own ``workqueue`` threading layer is chosen for the
process: on a machine whose cores other programs keep busy, one kernel launch took
milliseconds with GNU OpenMP's threads (they sleep and must be woken) and tens of
microseconds with the workqueue's. That layer must not be entered from two Python threads at
once, so captionlab's kernel calls hold a lock.

Array conventions (the layers' own buffers): batch-major and C-contiguous, a step's kernel
takes the whole ``(N, T, ...)`` buffer and the step ``t``. Dimensions: ``N`` batch, ``T``
time, ``H`` hidden size, ``G*H`` gate columns (G = 1 rnn, 4 lstm i, f, o, g, 3 gru r, z, n),
``M`` rows of scores, ``V`` vocabulary.
"""

from __future__ import annotations

import os
import threading
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from captionlab.nn.functional import log_softmax, sigmoid, tanh

BACKENDS = ("numba", "numpy")
ENV_VAR = "CAPTIONLAB_KERNELS"

#: The names every kernel set provides, each with the position of the argument whose size
#: measures the work of one call (elements of one step).
KERNEL_NAMES = {
    "rnn_forward_step": 1,
    "rnn_backward_step": 1,
    "rnn_cell": 0,
    "lstm_forward_step": 1,
    "lstm_backward_step": 1,
    "lstm_cell": 0,
    "gru_forward_step": 1,
    "gru_backward_step": 1,
    "gru_cell": 0,
    "softmax_cross_entropy": 0,
    "scatter_add_rows": 1,
    "topk_rows": 0,
}

#: Below this many elements per call a numba kernel runs on the calling thread only:
#: waking the other threads costs more than it saves (tests, gradient checks, tiny batches).
PARALLEL_MIN_WORK = 16384


# ------------------------------------------------------------------------------ RNN
def rnn_forward_step(xa, hw, b, h, hprev, t):
    """``h[:, t] = tanh(xa[:, t] + hw + b)``, copied to ``hprev[:, t + 1]`` if ``t + 1 < T``.

    Args:
        xa: input projections ``x @ Wx``, (N, T, H).
        hw: ``h_{t-1} @ Wh``, (N, H).
        b: bias, (H,).
        h: hidden states, (N, T, H), written at t.
        hprev: previous hidden states, (N, T, H) (``hprev[:, t]`` = h_{t-1}).
        t: the step.
    """
    a = h[:, t]  # (N, H)
    np.add(xa[:, t], hw, out=a)
    a += b
    tanh(a, out=a)
    if t + 1 < h.shape[1]:
        hprev[:, t + 1] = a


def rnn_backward_step(dh, dhw, h, da, db, t):
    """``da[:, t] = (dh[:, t] + dhw) * (1 - h[:, t]**2)``; ``db += sum_n da[:, t]``.

    Args:
        dh: upstream gradients, (N, T, H).
        dhw: the gradient reaching h_t from step t + 1, ``da_{t+1} @ Wh.T``, (N, H).
        h: hidden states, (N, T, H).
        da: pre-activation gradients, (N, T, H), written at t.
        db: bias gradient, (H,), accumulated.
        t: the step.
    """
    d = da[:, t]  # (N, H)
    np.add(dh[:, t], dhw, out=d)
    ht = h[:, t]
    d *= 1 - ht * ht
    db += d.sum(axis=0)


def rnn_cell(a):
    """In place: pre-activations ``a`` (N, H) -> ``tanh(a)``."""
    np.tanh(a, out=a)


# ----------------------------------------------------------------------------- LSTM
def lstm_forward_step(gates, hw, b, c, tanh_c, h, hprev, t):
    """One LSTM step after the matrix products (gates i, f, o, g).

    Args:
        gates: (N, T, 4H); at t holds ``x_t @ Wx`` on entry, the activations i, f, o, g
            on exit.
        hw: ``h_{t-1} @ Wh``, (N, 4H).
        b: bias, (4H,).
        c: cell states, (N, T+1, H): ``c[:, t]`` = c_{t-1} is read, ``c[:, t+1]`` = c_t
            written.
        tanh_c: ``tanh(c_t)``, (N, T, H), written at t.
        h: hidden states, (N, T, H), written at t.
        hprev: previous hidden states, (N, T, H); gets h_t at t + 1 if ``t + 1 < T``.
        t: the step.
    """
    H = h.shape[2]
    a = gates[:, t]  # (N, 4H)
    a += hw
    a += b
    sigmoid(a[:, : 3 * H], out=a[:, : 3 * H])
    tanh(a[:, 3 * H :], out=a[:, 3 * H :])
    i, f, o, g = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
    ct = c[:, t + 1]
    np.multiply(f, c[:, t], out=ct)
    ct += i * g  # c_t = f * c_{t-1} + i * g
    tanh(ct, out=tanh_c[:, t])
    np.multiply(o, tanh_c[:, t], out=h[:, t])  # h_t = o * tanh(c_t)
    if t + 1 < h.shape[1]:
        hprev[:, t + 1] = h[:, t]


def lstm_backward_step(dh, dhw, dc, gates, c, tanh_c, da, db, t):
    """One LSTM backward step before the matrix products.

    Args:
        dh: upstream gradients, (N, T, H).
        dhw: the gradient reaching h_t from step t + 1, ``da_{t+1} @ Wh.T``, (N, H).
        dc: the gradient of c_t from step t + 1, (N, H); updated to that of c_{t-1}.
        gates: i, f, o, g, (N, T, 4H).
        c: cell states, (N, T+1, H) (``c[:, t]`` = c_{t-1}).
        tanh_c: (N, T, H).
        da: pre-activation gradients, (N, T, 4H), written at t.
        db: bias gradient, (4H,), accumulated.
        t: the step.
    """
    H = tanh_c.shape[2]
    a = gates[:, t]
    i, f, o, g = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
    tc = tanh_c[:, t]
    dht = dh[:, t] + dhw
    dc += (1 - tc * tc) * o * dht  # through h_t = o * tanh(c_t)
    d = da[:, t]
    di, df, do, dg = d[:, :H], d[:, H : 2 * H], d[:, 2 * H : 3 * H], d[:, 3 * H :]
    np.multiply(dht * tc, (1 - o) * o, out=do)
    np.multiply(dc * g, (1 - i) * i, out=di)
    np.multiply(dc * c[:, t], (1 - f) * f, out=df)
    np.multiply(dc, (1 - g * g) * i, out=dg)
    dc *= f  # dc_{t-1}
    db += d.sum(axis=0)


def lstm_cell(a, prev_c, next_c, tanh_c, next_h):
    """One LSTM step from its pre-activations.

    Args:
        a: pre-activations (N, 4H), replaced by the gates i, f, o, g.
        prev_c: (N, H).
        next_c, tanh_c, next_h: (N, H) outputs: c_t, tanh(c_t), h_t.
    """
    H = prev_c.shape[1]
    sigmoid(a[:, : 3 * H], out=a[:, : 3 * H])
    np.tanh(a[:, 3 * H :], out=a[:, 3 * H :])
    i, f, o, g = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
    np.multiply(f, prev_c, out=next_c)
    next_c += i * g
    np.tanh(next_c, out=tanh_c)
    np.multiply(o, tanh_c, out=next_h)


# ------------------------------------------------------------------------------ GRU
def gru_forward_step(gates, hw, b, bh, ha_n, h, hprev, t):
    """One GRU step after the matrix products (gates r, z, n).

    Args:
        gates: (N, T, 3H); at t holds ``x_t @ Wx`` on entry, r, z, n on exit.
        hw: ``h_{t-1} @ Wh``, (N, 3H).
        b, bh: input and recurrent biases, (3H,).
        ha_n: (N, T, H), gets ``h_{t-1} @ Wh_n + bh_n`` at t.
        h: hidden states, (N, T, H), written at t.
        hprev: previous hidden states, (N, T, H): ``hprev[:, t]`` = h_{t-1} is read; gets
            h_t at t + 1 if ``t + 1 < T``.
        t: the step.
    """
    H = h.shape[2]
    a = gates[:, t]  # (N, 3H)
    a += b  # x_t @ Wx + b
    ha = hw + bh  # h_{t-1} @ Wh + bh, (N, 3H)
    rz = a[:, : 2 * H]
    rz += ha[:, : 2 * H]
    sigmoid(rz, out=rz)
    r, z, n = a[:, :H], a[:, H : 2 * H], a[:, 2 * H :]
    ha_n[:, t] = ha[:, 2 * H :]
    n += r * ha[:, 2 * H :]
    tanh(n, out=n)
    ht = h[:, t]
    np.subtract(hprev[:, t], n, out=ht)
    ht *= z
    ht += n  # h_t = (1 - z) n + z h_{t-1}
    if t + 1 < h.shape[1]:
        hprev[:, t + 1] = ht


def gru_backward_step(dh, dhw, carry, gates, ha_n, hprev, dxa, dha, db, dbh, t):
    """One GRU backward step before the matrix product.

    Args:
        dh: upstream gradients, (N, T, H).
        dhw: ``dha_{t+1} @ Wh.T``, (N, H).
        carry: ``dh_{t+1} * z_{t+1}``, (N, H); with dhw, the gradient reaching h_t from
            step t + 1. Updated to this step's ``dh_t * z_t``.
        gates: r, z, n, (N, T, 3H).
        ha_n: (N, T, H).
        hprev: previous hidden states, (N, T, H).
        dxa, dha: gradients of ``x @ Wx + b`` and ``h @ Wh + bh``, (N, T, 3H), written at t.
        db, dbh: bias gradients, (3H,), accumulated.
        t: the step.
    """
    H = ha_n.shape[2]
    a = gates[:, t]
    r, z, n = a[:, :H], a[:, H : 2 * H], a[:, 2 * H :]
    dht = dh[:, t] + (dhw + carry)
    d = dxa[:, t]
    dr, dz, dn = d[:, :H], d[:, H : 2 * H], d[:, 2 * H :]
    np.multiply((hprev[:, t] - n) * dht, (1 - z) * z, out=dz)
    np.multiply((1 - z) * dht, 1 - n * n, out=dn)
    np.multiply(dn * ha_n[:, t], (1 - r) * r, out=dr)
    dha[:, t, : 2 * H] = d[:, : 2 * H]
    np.multiply(dn, r, out=dha[:, t, 2 * H :])
    np.multiply(dht, z, out=carry)
    db += d.sum(axis=0)
    dbh += dha[:, t].sum(axis=0)


def gru_cell(xa, ha, prev_h, gates, next_h):
    """One GRU step from its pre-activations.

    Args:
        xa: ``x @ Wx + b``, (N, 3H).
        ha: ``prev_h @ Wh + bh``, (N, 3H).
        prev_h: (N, H).
        gates: (N, 3H) output, r, z, n.
        next_h: (N, H) output.
    """
    H = prev_h.shape[1]
    rz = gates[:, : 2 * H]
    np.add(xa[:, : 2 * H], ha[:, : 2 * H], out=rz)
    sigmoid(rz, out=rz)
    r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
    np.multiply(r, ha[:, 2 * H :], out=n)
    n += xa[:, 2 * H :]
    np.tanh(n, out=n)
    np.subtract(prev_h, n, out=next_h)  # h' = (1 - z) n + z h = n + z (h - n)
    next_h *= z
    next_h += n


# ------------------------------------------------------------------- loss, embedding
def softmax_cross_entropy(x, y, weight, dx):
    """Weighted softmax cross-entropy of score rows, and its gradient.

    Args:
        x: scores, (M, V).
        y: integer targets, (M,).
        weight: per-row weights, (M,), x's dtype.
        dx: (M, V) output, ``weight[m] * (softmax(x[m]) - onehot(y[m]))``; may be x.

    Returns:
        ``sum_m weight[m] * -log softmax(x[m])[y[m]]`` as a float (summed in float64).
    """
    rows = np.arange(x.shape[0])
    logp = log_softmax(x)  # (M, V)
    loss = -np.sum(weight * logp[rows, y], dtype=np.float64)
    np.exp(logp, out=dx)
    dx *= weight[:, None]
    dx[rows, y] -= weight
    return float(loss)


def scatter_add_rows(idx, src, out):
    """``out[idx[r]] += src[r]`` for every row, repeated indices summed.

    Args:
        idx: integer rows of ``out``, (R,).
        src: (R, W).
        out: (V, W), accumulated.
    """
    np.add.at(out, idx, src)


def topk_rows(total, out):
    """The column indices of the ``k`` largest entries of each row, best first; ties go to
    the lower index (so k = 1 is ``argmax``; beam search's choice of candidates).

    Args:
        total: (R, C) scores, NaN-free (``-inf`` allowed).
        out: (R, k) integer output, ``k <= C``.
    """
    out[...] = np.argsort(-total, axis=1, kind="stable")[:, : out.shape[1]]


# ---------------------------------------------------------------------------- switch
class _KernelSwitch:
    """The one place that holds which kernels are in use (see the module docstring)."""

    def __init__(self, requested: str) -> None:
        self.requested = requested
        self.numpy = types.SimpleNamespace(**{k: globals()[k] for k in KERNEL_NAMES})
        self.numba: types.SimpleNamespace | None = None
        self.failed = False  # numba was missing or failed to compile: NumPy from then on
        self.lock = threading.Lock()

    def active(self) -> types.SimpleNamespace:
        if self.requested == "numpy" or self.failed:
            return self.numpy
        if self.numba is None:
            self.numba = self._load_numba()
        return self.numpy if self.failed else self.numba

    def fail(self, err: BaseException) -> None:
        if not self.failed:
            self.failed = True
            warnings.warn(
                f"captionlab.nn: the numba kernels are unavailable ({type(err).__name__}: "
                f"{err}); using the NumPy kernels (slower). Set {ENV_VAR}=numpy to silence.",
                RuntimeWarning,
                stacklevel=4,
            )

    def _load_numba(self) -> types.SimpleNamespace:
        try:
            import numba
            from numba.core.errors import NumbaError

            if "NUMBA_THREADING_LAYER" not in os.environ:
                numba.config.THREADING_LAYER = "workqueue"  # see the module docstring
            from captionlab.nn import kernels_numba
        except Exception as err:  # ImportError, or numba refusing this numpy
            self.fail(err)
            return self.numpy
        return types.SimpleNamespace(
            **{
                k: self._guarded(
                    getattr(kernels_numba, k), getattr(self.numpy, k), NumbaError, w, numba
                )
                for k, w in KERNEL_NAMES.items()
            }
        )

    def _guarded(self, fast, ref, errors, work_arg, numba):
        """``fast``, on one thread for small work, serialised across Python threads; if it
        fails to compile: warn once and use ``ref`` from then on."""

        def kernel(*args):
            if self.failed:
                return ref(*args)
            try:
                with self.lock:  # numba's workqueue layer must not be entered concurrently
                    if args[work_arg].size >= PARALLEL_MIN_WORK:
                        return fast(*args)
                    threads = numba.get_num_threads()
                    numba.set_num_threads(1)  # waking the other threads would cost more
                    try:
                        return fast(*args)
                    finally:
                        numba.set_num_threads(threads)
            except errors as err:
                self.fail(err)
                return ref(*args)

        kernel.__name__ = kernel.__qualname__ = fast.__name__
        kernel.__doc__ = ref.__doc__
        return kernel


def _from_env() -> str:
    value = os.environ.get(ENV_VAR, "numba").strip().lower() or "numba"
    if value not in BACKENDS:
        warnings.warn(
            f"{ENV_VAR} must be one of {BACKENDS}, got {value!r}; using 'numba'",
            RuntimeWarning,
            stacklevel=2,
        )
        value = "numba"
    return value


_SWITCH = _KernelSwitch(_from_env())


def active() -> types.SimpleNamespace:
    """The kernels in use: a namespace with every name in :data:`KERNEL_NAMES`."""
    return _SWITCH.active()


def kernels_in_use() -> str:
    """``"numba"`` or ``"numpy"``: the kernels the layers use now (after any fallback)."""
    return "numpy" if _SWITCH.requested == "numpy" or _SWITCH.failed else "numba"


def set_kernels(name: str) -> None:
    """Use the ``"numba"`` (fused, multi-threaded) or ``"numpy"`` (reference) kernels."""
    if name not in BACKENDS:
        raise ValueError(f"kernels must be one of {BACKENDS}, got {name!r}")
    _SWITCH.requested = name


@contextmanager
def use_kernels(name: str) -> Iterator[None]:
    """Use the ``"numba"`` or ``"numpy"`` kernels inside a ``with`` block, then restore."""
    before = _SWITCH.requested
    set_kernels(name)
    try:
        yield
    finally:
        _SWITCH.requested = before


def set_num_threads(n: int) -> None:
    """Threads for the numba kernels (numba's default: all cores); no-op for NumPy."""
    if kernels_in_use() == "numba" and _SWITCH.active() is _SWITCH.numba:
        import numba

        numba.set_num_threads(n)
