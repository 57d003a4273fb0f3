"""Finite-difference checks shared by the Transformer layer tests (not a test module)."""

from __future__ import annotations

import numpy as np

from captionlab import nn
from captionlab.nn.gradcheck import eval_numerical_gradient_array, rel_error


def decoder_layer_grad_errors(x, memory, params, P, dout, summary=False, coverage=False, heads=2):
    """Relative errors of the decoder layer's analytic gradients (x, memory, every parameter)
    against finite differences: causal mask, dropout 0.2 with fixed masks, the cells' places
    ``P`` (or None), the running summary and coverage as asked. Returns ``(errors, forward,
    analytic)`` so a test can run negative controls with the same closures."""
    causal = np.tril(np.ones((x.shape[1], x.shape[1])))

    def forward(x_, memory_, p_):
        rng = np.random.default_rng(6)  # the same dropout masks at every call
        return nn.decoder_layer_forward(
            x_, memory_, p_, heads, causal, 0.2, rng, P, summary, coverage
        )[0]

    def analytic():
        _, cache = nn.decoder_layer_forward(
            x, memory, params, heads, causal, 0.2, np.random.default_rng(6), P, summary, coverage
        )
        return nn.decoder_layer_backward(dout, cache)

    dx, dmemory, dparams = analytic()
    errors = {
        "x": rel_error(
            eval_numerical_gradient_array(lambda v: forward(v, memory, params), x, dout), dx
        ),
        "memory": rel_error(
            eval_numerical_gradient_array(lambda v: forward(x, v, params), memory, dout), dmemory
        ),
    }
    for key in params:
        if key.endswith("attn.bk"):  # a constant on every key: the softmax ignores it
            assert np.abs(dparams[key]).max() < 1e-12
            continue
        num = eval_numerical_gradient_array(lambda _: forward(x, memory, params), params[key], dout)
        errors[key] = rel_error(num, dparams[key])
    return errors, forward, analytic
