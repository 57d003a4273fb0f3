"""Straightforward per-step reference implementations of the sequence layers.

The fast paths in captionlab.nn must equal these loops over the step functions (cs231n's
own solution shape). Imported by the nn tests; not a test module itself.
"""

from __future__ import annotations

import numpy as np

from captionlab.nn import (
    gru_step_backward,
    gru_step_forward,
    lstm_step_backward,
    lstm_step_forward,
    rnn_step_backward,
    rnn_step_forward,
)


def rnn_forward_ref(x, h0, Wx, Wh, b):
    """x (N, T, D), h0 (N, H) -> h (N, T, H), caches (list of T step caches)."""
    N, T, _ = x.shape
    h = np.zeros((N, T, h0.shape[1]), dtype=x.dtype)
    caches, prev = [], h0
    for t in range(T):
        prev, cache = rnn_step_forward(x[:, t], prev, Wx, Wh, b)
        h[:, t] = prev
        caches.append(cache)
    return h, caches


def rnn_backward_ref(dh, caches):
    """dh (N, T, H) -> dx (N, T, D), dh0 (N, H), dWx, dWh, db."""
    N, T, H = dh.shape
    D = caches[0][0].shape[1]
    dx = np.zeros((N, T, D), dtype=dh.dtype)
    dprev = np.zeros((N, H), dtype=dh.dtype)
    dWx = dWh = db = 0
    for t in reversed(range(T)):
        dx[:, t], dprev, dWx_t, dWh_t, db_t = rnn_step_backward(dh[:, t] + dprev, caches[t])
        dWx, dWh, db = dWx + dWx_t, dWh + dWh_t, db + db_t
    return dx, dprev, dWx, dWh, db


def lstm_forward_ref(x, h0, Wx, Wh, b):
    """x (N, T, D), h0 (N, H) -> h (N, T, H), caches; c0 = 0."""
    N, T, _ = x.shape
    H = h0.shape[1]
    h = np.zeros((N, T, H), dtype=x.dtype)
    caches, prev_h, prev_c = [], h0, np.zeros_like(h0)
    for t in range(T):
        prev_h, prev_c, cache = lstm_step_forward(x[:, t], prev_h, prev_c, Wx, Wh, b)
        h[:, t] = prev_h
        caches.append(cache)
    return h, caches


def lstm_backward_ref(dh, caches):
    """dh (N, T, H) -> dx (N, T, D), dh0 (N, H), dWx, dWh, db."""
    N, T, H = dh.shape
    D = caches[0][0].shape[1]
    dx = np.zeros((N, T, D), dtype=dh.dtype)
    dprev_h = np.zeros((N, H), dtype=dh.dtype)
    dprev_c = np.zeros((N, H), dtype=dh.dtype)
    dWx = dWh = db = 0
    for t in reversed(range(T)):
        dx[:, t], dprev_h, dprev_c, dWx_t, dWh_t, db_t = lstm_step_backward(
            dh[:, t] + dprev_h, dprev_c, caches[t]
        )
        dWx, dWh, db = dWx + dWx_t, dWh + dWh_t, db + db_t
    return dx, dprev_h, dWx, dWh, db


def gru_forward_ref(x, h0, Wx, Wh, b, bh):
    """x (N, T, D), h0 (N, H) -> h (N, T, H), caches."""
    N, T, _ = x.shape
    h = np.zeros((N, T, h0.shape[1]), dtype=x.dtype)
    caches, prev = [], h0
    for t in range(T):
        prev, cache = gru_step_forward(x[:, t], prev, Wx, Wh, b, bh)
        h[:, t] = prev
        caches.append(cache)
    return h, caches


def gru_backward_ref(dh, caches):
    """dh (N, T, H) -> dx (N, T, D), dh0 (N, H), dWx, dWh, db, dbh."""
    N, T, H = dh.shape
    D = caches[0][0].shape[1]
    dx = np.zeros((N, T, D), dtype=dh.dtype)
    dprev = np.zeros((N, H), dtype=dh.dtype)
    dWx = dWh = db = dbh = 0
    for t in reversed(range(T)):
        dx[:, t], dprev, dWx_t, dWh_t, db_t, dbh_t = gru_step_backward(dh[:, t] + dprev, caches[t])
        dWx, dWh, db, dbh = dWx + dWx_t, dWh + dWh_t, db + db_t, dbh + dbh_t
    return dx, dprev, dWx, dWh, db, dbh
