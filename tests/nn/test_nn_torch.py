"""The NumPy RNN, LSTM and GRU equal torch.nn.RNN/LSTM/GRU in outputs and all gradients."""

import numpy as np
import pytest

from captionlab import nn

torch = pytest.importorskip("torch")

N, T, D, H = 3, 5, 4, 6


def _torch_run(module, x, h0, dh, c0=None):
    """Run a one-layer batch_first torch module; return h and grads of x, h0 and weights."""
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    if c0 is None:
        out, _ = module(xt, h0t)
    else:
        out, _ = module(xt, (h0t, torch.tensor(c0[None])))
    out.backward(torch.tensor(dh))
    grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    return out.detach().numpy(), xt.grad.numpy(), h0t.grad.numpy()[0], grads


def _inputs(seed):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((N, T, D)),
        rng.standard_normal((N, H)),
        rng.standard_normal((N, T, H)),
    )


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


def test_rnn_equals_torch():
    torch.manual_seed(0)
    m = torch.nn.RNN(D, H, nonlinearity="tanh", batch_first=True).double()
    x, h0, dh = _inputs(0)
    Wx = m.weight_ih_l0.detach().numpy().T.copy()
    Wh = m.weight_hh_l0.detach().numpy().T.copy()
    b = (m.bias_ih_l0 + m.bias_hh_l0).detach().numpy()
    h, cache = nn.rnn_forward(x, h0, Wx, Wh, b)
    dx, dh0, dWx, dWh, db = nn.rnn_backward(dh, cache)
    out, tdx, tdh0, g = _torch_run(m, x, h0, dh)
    _close(h, out)
    _close(dx, tdx)
    _close(dh0, tdh0)
    _close(dWx, g["weight_ih_l0"].T)
    _close(dWh, g["weight_hh_l0"].T)
    _close(db, g["bias_ih_l0"])
    _close(db, g["bias_hh_l0"])


def test_lstm_equals_torch():
    torch.manual_seed(1)
    m = torch.nn.LSTM(D, H, batch_first=True).double()
    x, h0, dh = _inputs(1)
    # torch stacks gates i, f, g, o; captionlab uses i, f, o, g.
    order = np.concatenate([np.arange(0, 2 * H), np.arange(3 * H, 4 * H), np.arange(2 * H, 3 * H)])
    Wx = m.weight_ih_l0.detach().numpy()[order].T.copy()
    Wh = m.weight_hh_l0.detach().numpy()[order].T.copy()
    b = (m.bias_ih_l0 + m.bias_hh_l0).detach().numpy()[order]
    h, cache = nn.lstm_forward(x, h0, Wx, Wh, b)
    dx, dh0, dWx, dWh, db = nn.lstm_backward(dh, cache)
    out, tdx, tdh0, g = _torch_run(m, x, h0, dh, c0=np.zeros((N, H)))
    _close(h, out)
    _close(dx, tdx)
    _close(dh0, tdh0)
    _close(dWx, g["weight_ih_l0"][order].T)
    _close(dWh, g["weight_hh_l0"][order].T)
    _close(db, g["bias_ih_l0"][order])
    _close(db, g["bias_hh_l0"][order])


def test_gru_equals_torch():
    torch.manual_seed(2)
    m = torch.nn.GRU(D, H, batch_first=True).double()
    x, h0, dh = _inputs(2)
    Wx = m.weight_ih_l0.detach().numpy().T.copy()
    Wh = m.weight_hh_l0.detach().numpy().T.copy()
    b = m.bias_ih_l0.detach().numpy().copy()
    bh = m.bias_hh_l0.detach().numpy().copy()
    h, cache = nn.gru_forward(x, h0, Wx, Wh, b, bh)
    dx, dh0, dWx, dWh, db, dbh = nn.gru_backward(dh, cache)
    out, tdx, tdh0, g = _torch_run(m, x, h0, dh)
    _close(h, out)
    _close(dx, tdx)
    _close(dh0, tdh0)
    _close(dWx, g["weight_ih_l0"].T)
    _close(dWh, g["weight_hh_l0"].T)
    _close(db, g["bias_ih_l0"])
    _close(dbh, g["bias_hh_l0"])


def test_gru_step_equals_torch_gru_cell():
    torch.manual_seed(3)
    cell = torch.nn.GRUCell(D, H).double()
    rng = np.random.default_rng(3)
    x, h = rng.standard_normal((N, D)), rng.standard_normal((N, H))
    next_h, _ = nn.gru_step_forward(
        x,
        h,
        cell.weight_ih.detach().numpy().T,
        cell.weight_hh.detach().numpy().T,
        cell.bias_ih.detach().numpy(),
        cell.bias_hh.detach().numpy(),
    )
    expected = cell(torch.tensor(x), torch.tensor(h)).detach().numpy()
    _close(next_h, expected)
