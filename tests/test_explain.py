"""Word explanations: the captioner's feature gradient, the pixel path against autograd through
a PyTorch copy of the whole pipeline, the caller's backbone, geometry and attention maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from captionlab.captioning import AttentionCaptioner, CaptioningRNN, CaptioningTransformer
from captionlab.data.feature_config import FeatureExtractorConfig
from captionlab.data.pca import PCA, fit_pca
from captionlab.errors import UserError
from captionlab.explain import (
    CaptionScores,
    CropGeometry,
    Explainer,
    FeaturePipeline,
    attention_to_pixels,
    cell_peak,
    fuse_maps,
    guided_gradcam,
    map_peak,
    word_cell_relevance,
    word_feature_grads,
    word_logprobs,
)
from captionlab.extract import FeatureExtractor
from captionlab.nn.gradcheck import eval_numerical_gradient, rel_error
from captionlab.vision import saliency as sal
from captionlab.vision.backbone import load_backbone, preprocess
from captionlab.vision.images import load_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V = 12
VOCAB = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "<UNK>"]
                                     + [f"w{i}" for i in range(4, V)])}  # fmt: skip
CAPTION = np.array([1, 5, 9, 4, 7, 2])  # <START> w5 w9 w4 w7 <END>: positions 0..4


def rnn_captioner(cell: str, D: int = 6, seed: int = 3) -> CaptioningRNN:
    model = CaptioningRNN(VOCAB, input_dim=D, wordvec_dim=5, hidden_dim=7, cell_type=cell,
                          dtype=np.float64, seed=seed)  # fmt: skip
    rng = np.random.RandomState(seed)
    for k, v in model.params.items():  # non-zero biases, gates away from saturation
        model.params[k] = 0.5 * rng.randn(*v.shape)
    return model


def attention_captioner(
    position: bool = False, D: int = 6, seed: int = 3, locations: bool = False
) -> AttentionCaptioner:
    """Show-Attend-Tell over 4 cells, with the attention penalty on (a loss term no word mask
    removes), with ``position`` a position embedding per cell, with ``locations`` the cells'
    places."""
    model = AttentionCaptioner(VOCAB, input_dim=D, wordvec_dim=5, hidden_dim=7, attention_dim=4,
                               dtype=np.float64, seed=seed, attention_penalty=0.5,
                               num_cells=4 if position else None,
                               locations=locations)  # fmt: skip
    rng = np.random.RandomState(seed)
    for k, v in model.params.items():
        model.params[k] = 0.5 * rng.randn(*v.shape)
    return model


def transformer(
    grid: bool = False,
    cells: bool = False,
    seed: int = 3,
    locations: bool = False,
    coverage: bool = False,
) -> CaptioningTransformer:
    """A 2-layer CaptioningTransformer with dropout, left in training mode (as built): its
    explanations must be the decoding model's, without dropout. ``locations``: it reads the
    places its cross-attention looked at; ``coverage``: its cross-attention is biased by
    what it looked at before."""
    model = CaptioningTransformer(VOCAB, 6, 8, num_heads=2, num_layers=2, max_length=10,
                                  dropout=0.2, dtype=np.float64, seed=seed, dim_feedforward=12,
                                  grid=grid, num_cells=4 if cells else None,
                                  locations=locations, coverage=coverage)  # fmt: skip
    rng = np.random.RandomState(seed)
    for k, v in model.params.items():  # non-trivial weights (the init's are 0.02-small)
        model.params[k] = v + rng.randn(*v.shape) / np.sqrt(v.shape[0] if v.ndim == 2 else 4)
    return model


# Every captioner explanations must work for, with the features it takes (N first).
CAPTIONERS = {
    "rnn": (lambda: rnn_captioner("rnn"), (3, 6)),
    "lstm": (lambda: rnn_captioner("lstm"), (3, 6)),
    "gru": (lambda: rnn_captioner("gru"), (3, 6)),
    "attention": (lambda: attention_captioner(), (3, 4, 6)),
    "attention_cells": (lambda: attention_captioner(position=True), (3, 4, 6)),
    # seed 11: other seeds leave an entry of 1e-5-1e-4 whose difference quotient errs by
    # 1e-7-3e-6 relative, falling 4x per halving of h (truncation; the model's own tests
    # hold these gradients to 1e-10 against torch autograd)
    "attention_locations": (lambda: attention_captioner(locations=True, seed=11), (3, 4, 6)),
    "transformer": (lambda: transformer(), (3, 6)),
    "transformer_grid": (lambda: transformer(grid=True), (3, 4, 6)),
    "transformer_cells": (lambda: transformer(grid=True, cells=True), (3, 4, 6)),
    "transformer_locations": (
        lambda: transformer(grid=True, cells=True, locations=True),
        (3, 4, 6),
    ),
    # seed 4: with seeds 3-14 the float64 difference quotients' error ranges 4e-9 to 2e-6
    # relative (a smooth but sharper function: coverage sums attention weights over the
    # words); the layer's tests hold its gradients to 1e-9 against torch autograd
    "transformer_coverage": (
        lambda: transformer(grid=True, cells=True, locations=True, coverage=True, seed=4),
        (3, 4, 6),
    ),
}


# ------------------------------------------------------------------ the captioner's backward
@pytest.mark.parametrize("name", list(CAPTIONERS))
def test_word_feature_gradient_passes_numerical_check(name):
    """d log p_t / d features by the captioner's loss backward equals finite differences of
    the teacher-forced log-probability (from the decoding interface), for one word per row
    (what saliency asks) and for several weighted words per row."""
    make, shape = CAPTIONERS[name]
    model = make()
    rng = np.random.RandomState(0)
    features = rng.randn(*shape)
    one = np.zeros((shape[0], CAPTION.size - 1))
    one[0, 2], one[1, 0], one[2, 4] = 1.0, 1.0, 1.0  # a different word for each image
    several = rng.randn(shape[0], CAPTION.size - 1)  # every position, weighted
    for weights in (one, several):
        grad = word_feature_grads(model, features, CAPTION, weights)
        num = eval_numerical_gradient(
            lambda f, w=weights: float((word_logprobs(model, f, CAPTION)[0] * w).sum()),
            features.copy(), verbose=False, h=1e-5,
        )  # fmt: skip
        assert grad.shape == features.shape and grad.dtype == np.float64
        assert rel_error(num, grad) < 1e-7
        assert rel_error(num, grad * 1.01) > 1e-3  # negative control: the check can fail


class PenalizedRNN(CaptioningRNN):
    """A captioner whose loss adds a term no word mask removes (as the AttentionCaptioner's
    attention penalty): ``penalty * |features|^2 / N``, declared by ``attention_penalty``."""

    penalty = attention_penalty = 0.7

    def loss(self, features, captions, *, mask=None, feature_grad=False):
        loss, grads = super().loss(features, captions, mask=mask, feature_grad=feature_grad)
        N = features.shape[0]
        loss += self.penalty * float((features**2).sum()) / N
        if feature_grad:
            grads["features"] = grads["features"] + 2 * self.penalty * features / N
        return loss, grads


def test_a_loss_term_free_of_words_cancels_out():
    model = PenalizedRNN(VOCAB, input_dim=6, wordvec_dim=5, hidden_dim=7, cell_type="lstm",
                         dtype=np.float64, seed=4)  # fmt: skip
    features = np.random.RandomState(3).randn(2, 6)
    weights = np.zeros((2, 5))
    weights[0, 1], weights[1, 3] = 1.0, -2.0
    num = eval_numerical_gradient(
        lambda f: float((word_logprobs(model, f, CAPTION)[0] * weights).sum()),
        features.copy(), verbose=False, h=1e-5,
    )  # fmt: skip
    assert rel_error(num, word_feature_grads(model, features, CAPTION, weights)) < 1e-7
    model.attention_penalty = 0.0  # not declared, yet in the loss: the check must fail
    assert rel_error(num, word_feature_grads(model, features, CAPTION, weights)) > 1e-3


@pytest.mark.parametrize("name", list(CAPTIONERS))
def test_autograd_function_matches_torch_gradcheck(name):
    make, shape = CAPTIONERS[name]
    model = make()
    features = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    features.requires_grad_(True)
    module_free = lambda f: CaptionScores(_Identity(), model, CAPTION)(f)  # noqa: E731
    assert torch.autograd.gradcheck(module_free, (features,), eps=1e-6, atol=1e-7)


class _Identity(torch.nn.Module):
    """Stands in for the pipeline when the input is already the features."""

    def forward(self, x):
        return x


def test_a_captioner_in_training_mode_is_explained_in_evaluation_mode():
    """A Transformer built (or left) in training mode drops units in its loss, never while
    decoding: its word gradient is the decoding model's, and it is given back training."""
    model = transformer(grid=True)
    model.dropout = 0.5
    features = np.random.RandomState(5).randn(2, 4, 6)
    weights = np.zeros((2, 5))
    weights[0, 1], weights[1, 3] = 1.0, 1.0
    grad = word_feature_grads(model, features, CAPTION, weights)
    assert model.training
    model.eval()
    assert np.array_equal(grad, word_feature_grads(model, features, CAPTION, weights))
    # negative control: the training-mode loss is another function of the features
    model.train()
    mask = weights != 0
    _, g = model.loss(features, np.tile(CAPTION, (2, 1)), mask=mask, feature_grad=True)
    assert rel_error(-2 * g["features"], grad) > 1e-2


@pytest.mark.parametrize("name", ["attention", "attention_cells", "transformer_grid"])
def test_logprobs_give_the_attention_the_captioner_decodes_with(name):
    """word_logprobs' attention is the decoding interface's: for the greedy caption of an
    image, the alphas greedy decoding gives (rows sum to 1), and the log-probabilities are
    those of the teacher-forced loss."""
    from captionlab.captioning.generate import greedy_decode

    make, shape = CAPTIONERS[name]
    model = make()
    if isinstance(model, CaptioningTransformer):
        model.eval()  # the loss below is the decoding model's
    features = np.random.RandomState(6).randn(1, *shape[1:])
    words, alphas = greedy_decode(model, features, max_length=5, return_attention=True)
    caption = np.concatenate([[1], words[0]])
    logp, attention = word_logprobs(model, features, caption)
    assert attention.shape == (1, 5, 4)
    np.testing.assert_allclose(attention.sum(axis=2), 1.0, rtol=1e-12)
    np.testing.assert_allclose(attention, alphas, rtol=1e-10, atol=1e-12)
    for t in range(5):
        mask = np.zeros((1, 5), dtype=bool)
        mask[0, t] = True
        loss, _ = model.loss(features, caption[None], mask=mask)
        if isinstance(model, AttentionCaptioner):  # the penalty is in the loss: take it off
            loss -= model.loss(features, caption[None], mask=np.zeros_like(mask))[0]
        assert -loss == pytest.approx(logp[0, t], rel=1e-10)


def test_explainer_decodes_no_longer_than_the_transformer_encodes():
    backbone = load_backbone(fold_bn=True)
    config = FeatureExtractorConfig(image_size=64, grid=True, grid_taps="grid", grid_pca_dim=None)
    pipeline = FeaturePipeline(backbone, config, layout="grid")
    model = CaptioningTransformer(VOCAB, 1280, 8, num_heads=2, num_layers=1, max_length=10,
                                  dim_feedforward=12, grid=True, seed=0)  # fmt: skip
    assert Explainer(model, pipeline).max_length == 10  # the default 20 is more than it has
    assert Explainer(model, pipeline, max_length=7).max_length == 7
    assert (
        Explainer(rnn_captioner("rnn", D=1280), FeaturePipeline(backbone, config)).max_length == 20
    )
    with pytest.raises(UserError, match=r"must be <= 10, the positions the captioner encodes"):
        Explainer(model, pipeline, max_length=11)
    with pytest.raises(UserError, match=r"must be >= 1, got 0"):
        Explainer(model, pipeline, max_length=0)


def test_logprobs_equal_the_loss_of_one_word():
    """Teacher-forced log p_t from decode_step equals -N * the loss with a one-word mask."""
    model = rnn_captioner("lstm")
    features = np.random.RandomState(2).randn(2, 6)
    logp, attention = word_logprobs(model, features, CAPTION)
    assert logp.shape == (2, 5) and attention is None
    for t in range(5):
        mask = np.zeros((2, 5), dtype=bool)
        mask[:, t] = True
        loss, _ = model.loss(features, np.tile(CAPTION, (2, 1)), mask=mask)
        assert -loss * 2 == pytest.approx(logp[:, t].sum(), rel=1e-10)


# ------------------------------------------------------------------ the pixel path
def small_pca(config: FeatureExtractorConfig, seed: int = 0) -> PCA:
    """A PCA basis fitted on random non-negative "raw features" (any orthonormal basis does)."""
    rng = np.random.default_rng(seed)
    return fit_pca(rng.random((40, config.raw_dim), dtype=np.float32), config.pca_dim)


def shapes_image(S: int, seed: int = 0) -> np.ndarray:
    """A light image with two coloured squares, uint8 (S, S, 3)."""
    rng = np.random.default_rng(seed)
    img = np.full((S, S, 3), 225, np.uint8) + rng.integers(0, 8, (S, S, 3), dtype=np.uint8)
    img[S // 8 : S // 2, S // 8 : S // 2] = (215, 35, 35)
    img[S // 2 : 7 * S // 8, S // 2 : 7 * S // 8] = (35, 75, 215)
    return img


@pytest.mark.parametrize("fast", [True, False])
def test_pipeline_features_equal_the_feature_extractor(fast):
    config = FeatureExtractorConfig(image_size=64, pool="avg+2x2", pca_dim=8, fold_bn=fast,
                                    channels_last=fast)  # fmt: skip
    pca = small_pca(config)
    extractor = FeatureExtractor(config, pca=pca, workers=0)
    images = np.stack([shapes_image(64, s) for s in range(3)])
    expected = extractor.transform_images(images)  # (3, 8)
    pipeline = FeaturePipeline(extractor.model, config, pca)
    with torch.no_grad():
        got = pipeline(preprocess(images)).numpy()
    assert got.shape == expected.shape == (3, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    no_pca = FeatureExtractorConfig(image_size=64, pool="avg", fold_bn=fast, channels_last=fast)
    raw = FeatureExtractor(no_pca, model=extractor.model, workers=0).transform_images(images)
    with torch.no_grad():
        got = FeaturePipeline(extractor.model, no_pca)(preprocess(images)).numpy()
    np.testing.assert_allclose(got, raw, rtol=1e-4, atol=1e-5)


def torch_logprobs(model: CaptioningRNN, features: torch.Tensor, caption) -> torch.Tensor:
    """A PyTorch copy of CaptioningRNN's teacher-forced forward: (N, D) -> (N, T-1)."""
    p = {k: torch.from_numpy(v) for k, v in model.params.items()}
    H = p["Wh"].shape[0]
    h = features @ p["W_proj"] + p["b_proj"]  # (N, H)
    c = torch.zeros_like(h)
    out = []
    for t in range(len(caption) - 1):
        xa = p["W_embed"][caption[t]] @ p["Wx"] + p["b"]  # (G*H,)
        if model.cell_type == "rnn":
            h = torch.tanh(xa + h @ p["Wh"])
        elif model.cell_type == "lstm":
            a = xa + h @ p["Wh"]
            i, f, o = (torch.sigmoid(a[:, k * H : (k + 1) * H]) for k in range(3))
            c = f * c + i * torch.tanh(a[:, 3 * H :])
            h = o * torch.tanh(c)
        else:
            ha = h @ p["Wh"] + p["bh"]
            r = torch.sigmoid(xa[:H] + ha[:, :H])
            z = torch.sigmoid(xa[H : 2 * H] + ha[:, H : 2 * H])
            n = torch.tanh(xa[2 * H :] + r * ha[:, 2 * H :])
            h = (1 - z) * n + z * h
        scores = h @ p["W_vocab"] + p["b_vocab"]  # (N, V)
        out.append(torch.log_softmax(scores, dim=1)[:, caption[t + 1]])
    return torch.stack(out, dim=1)


class TorchCopy(torch.nn.Module):
    """The whole explanation path in PyTorch: backbone, pooling, PCA, captioner."""

    def __init__(self, backbone, config, pca, model):
        super().__init__()
        self.backbone, self.config, self.model = backbone, config, model
        self.mean = torch.from_numpy(pca.mean).double()
        self.components = torch.from_numpy(pca.components).double()

    def forward(self, x):
        grid = self.backbone.features(x, "grid")  # (N, C, 2, 2)
        pooled = torch.cat([grid.mean(dim=(2, 3)), grid.permute(0, 2, 3, 1).flatten(1)], dim=1)
        return torch_logprobs(self.model, (pooled - self.mean) @ self.components, CAPTION)


@pytest.fixture(scope="module")
def backbone64():
    """The pretrained backbone in float64 (unfolded), shared by the tests of this module."""
    return load_backbone().double()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_word_maps_equal_autograd_through_a_torch_copy(cell, backbone64):
    """Every word's signed pixel gradient, and its vanilla / SmoothGrad / IG map, equal what
    autograd gives through a PyTorch copy of backbone + avg+2x2 pooling + PCA + captioner."""
    config = FeatureExtractorConfig(image_size=64, pool="avg+2x2", pca_dim=6, fold_bn=False,
                                    channels_last=False)  # fmt: skip
    pca = small_pca(config, seed=1)
    model = rnn_captioner(cell, D=6)
    explainer = Explainer(model, FeaturePipeline(backbone64, config, pca))
    reference = TorchCopy(backbone64, config, pca, model)
    pixels = shapes_image(64)
    x = preprocess(pixels).double().expand(5, -1, -1, -1)  # one copy per word
    words = torch.arange(5)
    ours = sal.compute_saliency_maps(x, words, explainer.scores(CAPTION), reduce="none")
    theirs = sal.compute_saliency_maps(x, words, reference, reduce="none")
    assert theirs.abs().amax() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-9 * theirs.abs().amax())
    for method, options in (("vanilla", {}), ("smoothgrad", {"n_samples": 3}),
                            ("ig", {"steps": 4, "baseline": -1.0})):  # fmt: skip
        a = sal.saliency(x, words, explainer.scores(CAPTION), method, **options)
        b = sal.saliency(x, words, reference, method, **options)
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * b.abs().amax())


def torch_attention_logprobs(
    model: AttentionCaptioner, A: torch.Tensor, caption, hold_attention: bool = False
):
    """A PyTorch copy of AttentionCaptioner's teacher-forced forward: (N, L, D) -> (N, T-1);
    ``hold_attention``: the attention weights detached (constants to autograd)."""
    p = {k: torch.from_numpy(v) for k, v in model.params.items()}
    if "W_pos" in p:
        A = A + p["W_pos"]
    H = p["Wh"].shape[0]
    a_mean = A.mean(dim=1)  # (N, D)
    h, c = a_mean @ p["W_h0"] + p["b_h0"], a_mean @ p["W_c0"] + p["b_c0"]  # (N, H)
    A_proj = A @ p["W_att_a"]  # (N, L, K)
    out = []
    for t in range(len(caption) - 1):
        e = torch.tanh(A_proj + (h @ p["W_att_h"] + p["b_att"])[:, None]) @ p["w_att"]  # (N, L)
        alpha = torch.softmax(e, dim=1)
        if hold_attention:
            alpha = alpha.detach()
        beta = torch.sigmoid(h @ p["W_beta"] + p["b_beta"])  # (N, 1)
        z = beta * (alpha[:, :, None] * A).sum(dim=1)  # (N, D)
        a = p["W_embed"][caption[t]] @ p["Wx"] + z @ p["Wz"] + h @ p["Wh"] + p["b"]  # (N, 4H)
        i, f, o = (torch.sigmoid(a[:, k * H : (k + 1) * H]) for k in range(3))
        c = f * c + i * torch.tanh(a[:, 3 * H :])
        h = o * torch.tanh(c)
        scores = h @ p["W_vocab"] + p["b_vocab"]  # (N, V)
        out.append(torch.log_softmax(scores, dim=1)[:, caption[t + 1]])
    return torch.stack(out, dim=1)


class TorchGridCopy(torch.nn.Module):
    """The grid explanation path in PyTorch: backbone block10 (4x4 at 64 px) average-pooled to
    the last map's 2x2 cells beside it, the per-cell PCA and scale, the attention captioner."""

    def __init__(self, backbone, grid_pca, model, hold_attention: bool = False):
        super().__init__()
        self.backbone, self.model, self.hold_attention = backbone, model, hold_attention
        self.mean = torch.from_numpy(grid_pca.mean).double()
        self.components = torch.from_numpy(grid_pca.components).double()
        self.scale = float(grid_pca.scale)

    def forward(self, x):
        taps = self.backbone.taps(x, ("block10", "grid"))
        b10 = torch.nn.functional.avg_pool2d(taps["block10"], 2)  # (N, 112, 2, 2)
        cells = torch.cat([b10, taps["grid"]], dim=1).flatten(2).transpose(1, 2)  # (N, 4, Rg)
        A = (cells - self.mean) @ self.components / self.scale  # (N, 4, 6)
        return torch_attention_logprobs(self.model, A, CAPTION, self.hold_attention)


def small_grid_explainer(backbone) -> tuple[Explainer, PCA]:
    """The attention captioner (position embedding, penalty on) over block10 and the last map
    at 64 px (2x2 cells, a per-cell PCA to 6 with its scale), explained; and that PCA."""
    config = FeatureExtractorConfig(image_size=64, grid=True, grid_taps="block10+grid",
                                    grid_pca_dim=6, fold_bn=False,
                                    channels_last=False)  # fmt: skip
    rng = np.random.default_rng(4)
    cells = rng.random((40, config.grid_raw_dim), dtype=np.float32)
    grid_pca = fit_pca(cells, 6).with_unit_rms(cells)
    model = attention_captioner(position=True)
    pipeline = FeaturePipeline(backbone, config, layout="grid", grid_pca=grid_pca)
    return Explainer(model, pipeline), grid_pca


def test_grid_word_maps_equal_autograd_through_a_torch_copy(backbone64):
    """For the attention captioner (position embedding, penalty on), each word's signed pixel
    gradient and its maps equal autograd through a PyTorch copy of backbone taps + cells +
    per-cell PCA + captioner."""
    explainer, grid_pca = small_grid_explainer(backbone64)
    model = explainer.captioner
    reference = TorchGridCopy(backbone64, grid_pca, model)
    x = preprocess(shapes_image(64)).double().expand(5, -1, -1, -1)
    words = torch.arange(5)
    with torch.no_grad():
        np.testing.assert_allclose(explainer.scores(CAPTION)(x[:1]).numpy(),
                                   reference(x[:1]).numpy(), rtol=1e-10)  # fmt: skip
    ours = sal.compute_saliency_maps(x, words, explainer.scores(CAPTION), reduce="none")
    theirs = sal.compute_saliency_maps(x, words, reference, reduce="none")
    assert theirs.abs().amax() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-9 * theirs.abs().amax())
    for method, options in (("smoothgrad", {"n_samples": 2}), ("ig", {"steps": 3})):
        a = sal.saliency(x, words, explainer.scores(CAPTION), method, **options)
        b = sal.saliency(x, words, reference, method, **options)
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * b.abs().amax())


def test_held_attention_maps_equal_autograd_with_the_attention_detached(backbone64):
    """Explainer(hold_attention=True): each word's pixel gradient, SmoothGrad and LayerCAM
    equal autograd through the PyTorch copy with its attention weights detached, and differ
    from the maps with the attention free (the scores' path is gone, not a no-op)."""
    explainer, grid_pca = small_grid_explainer(backbone64)
    model = explainer.captioner
    held = Explainer(model, explainer.pipeline, hold_attention=True)
    reference = TorchGridCopy(backbone64, grid_pca, model, hold_attention=True)
    x = preprocess(shapes_image(64)).double().expand(5, -1, -1, -1)
    words = torch.arange(5)
    with torch.no_grad():  # the forward is the model's: holding changes only the backward
        np.testing.assert_allclose(held.scores(CAPTION)(x[:1]).numpy(),
                                   reference(x[:1]).numpy(), rtol=1e-10)  # fmt: skip
    ours = sal.compute_saliency_maps(x, words, held.scores(CAPTION), reduce="none")
    theirs = sal.compute_saliency_maps(x, words, reference, reduce="none")
    free = sal.compute_saliency_maps(x, words, explainer.scores(CAPTION), reduce="none")
    assert theirs.abs().amax() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-9 * theirs.abs().amax())
    assert (ours - free).abs().amax() > 1e-3 * free.abs().amax()  # negative control
    a = sal.saliency(x, words, held.scores(CAPTION), "smoothgrad", n_samples=2)
    b = sal.saliency(x, words, reference, "smoothgrad", n_samples=2)
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * b.abs().amax())


def test_hold_attention_needs_the_attention_captioner():
    """A captioner without attention weights of its own to hold is refused in one line."""
    config = FeatureExtractorConfig(image_size=64, pool="avg+2x2", pca_dim=6)
    pipeline = FeaturePipeline(load_backbone(fold_bn=True), config, small_pca(config))
    with pytest.raises(UserError, match=r"^--hold-attention needs a captioner with attention.*"
                       r"this model is a CaptioningRNN$"):  # fmt: skip
        Explainer(rnn_captioner("lstm"), pipeline, hold_attention=True)
    Explainer(rnn_captioner("lstm"), pipeline)  # without it, as before


def backbone_after(backbone, h: torch.Tensor, block: int) -> dict[str, torch.Tensor]:
    """The backbone run by hand from block ``block``'s output ``h``: every later block's tap
    and the last map (``grid``)."""
    taps = {f"block{block}": h}
    for i in range(block + 1, len(backbone._blocks)):
        h = backbone._blocks[i](h)
        taps[f"block{i}"] = h
    taps["grid"] = torch.nn.functional.relu6(backbone._bn1(backbone._conv_head(h)))
    return taps


def layer_cam_reference(A: torch.Tensor, logp: torch.Tensor, positions, S: int) -> np.ndarray:
    """LayerCAM by hand: ReLU(sum_c ReLU(d logp_t / d A_c) A_c), the mean over A's copies,
    bilinearly upsampled to S x S; A (n, C, h, w) requires grad, logp (n, T-1)."""
    cams = []
    for t in positions:
        (G,) = torch.autograd.grad(logp[:, t].sum(), A, retain_graph=True)
        cams.append((G.clamp_min(0) * A.detach()).sum(dim=1).clamp_min(0).mean(dim=0))
    up = torch.nn.functional.interpolate(torch.stack(cams)[:, None], size=(S, S),
                                         mode="bilinear", align_corners=False)  # fmt: skip
    return up[:, 0].float().numpy()


@pytest.mark.parametrize(("samples", "noise"), [(1, 0.0), (2, 0.3)])
def test_layercam_equals_autograd_at_the_block_through_a_torch_copy(samples, noise, backbone64):
    """LayerCAM of a pooled captioner's words at block7, over SmoothGrad's noisy copies, equals
    the block's activation and its autograd gradient through a PyTorch copy of the rest of
    the network, the pooling, the PCA and the LSTM."""
    config = FeatureExtractorConfig(image_size=64, pool="avg+2x2", pca_dim=6, fold_bn=False,
                                    channels_last=False)  # fmt: skip
    pca = small_pca(config, seed=1)
    model = rnn_captioner("lstm", D=6)
    explainer = Explainer(model, FeaturePipeline(backbone64, config, pca))
    pixels, positions = shapes_image(64), [0, 2, 3]
    ours = explainer.word_maps(pixels, CAPTION, positions, "layercam", samples=samples,
                               noise=noise, seed=5, layer="block7")  # fmt: skip
    copies = sal.noisy_copies(preprocess(pixels).double(), samples, noise, 5)[0]
    backbone64.eval()
    with torch.enable_grad():
        A = backbone64.taps(copies, ("block7",))["block7"].detach().requires_grad_(True)
        grid = backbone_after(backbone64, A, 7)["grid"]  # (n, C, 2, 2)
        pooled = torch.cat([grid.mean(dim=(2, 3)), grid.permute(0, 2, 3, 1).flatten(1)], dim=1)
        mean, comps = (torch.from_numpy(v).double() for v in (pca.mean, pca.components))
        features = (pooled - mean) @ comps
        theirs = layer_cam_reference(A, torch_logprobs(model, features, CAPTION), positions, 64)
    assert ours.shape == (3, 64, 64) and ours.dtype == np.float32
    assert theirs.max() > 0 and not np.allclose(theirs[0], theirs[1])
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6 * theirs.max())


def test_grid_layercam_at_a_tapped_block_equals_autograd_through_a_torch_copy(backbone64):
    """At block10, which feeds both the grid's cells and the rest of the network, LayerCAM of
    an attention captioner's words equals autograd through a PyTorch copy of both paths."""
    explainer, grid_pca = small_grid_explainer(backbone64)
    model = explainer.captioner
    pixels, positions = shapes_image(64), [1, 3]
    ours = explainer.word_maps(
        pixels, CAPTION, positions, "layercam", samples=1, noise=0.0, layer="block10"
    )
    backbone64.eval()
    with torch.enable_grad():
        # the image twice: with a batch of one, torch 2.13's CPU backward through the network's
        # head returned another gradient here when it arrived in the transposed cells'
        # strides (float64, unfolded; a batch of two, or the gradient made contiguous, agree
        # with each other and with the explainer, which gives one image's map)
        x = preprocess(pixels).double().expand(2, -1, -1, -1)
        A = backbone64.taps(x, ("block10",))["block10"].detach().requires_grad_(True)
        last = backbone_after(backbone64, A, 10)["grid"]
        b10 = torch.nn.functional.avg_pool2d(A, 2)  # (2, 112, 2, 2)
        cells = torch.cat([b10, last], dim=1).flatten(2).transpose(1, 2)  # (2, 4, Rg)
        mean, comps = (torch.from_numpy(v).double() for v in (grid_pca.mean, grid_pca.components))
        grid = (cells - mean) @ comps
        logp = torch_attention_logprobs(model, grid / float(grid_pca.scale), CAPTION)
        theirs = layer_cam_reference(A, logp, positions, 64)
    assert theirs.max() > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6 * theirs.max())


def test_layercam_at_several_blocks_is_the_geometric_mean_of_each_blocks_scaled_map(backbone64):
    """``layer="block4,block10"``: each block's map as LayerCAM at that block alone gives it
    (the same noisy copies), scaled to a maximum of 1, fused by their geometric mean; a
    block whose map is zero everywhere makes the fused map zero."""
    explainer, _ = small_grid_explainer(backbone64)
    pixels, positions = shapes_image(64), [0, 1, 3]
    options = {"samples": 2, "noise": 0.3, "seed": 4}
    fused = explainer.word_maps(pixels, CAPTION, positions, "layercam", layer="block4,block10",
                                **options)  # fmt: skip
    each = [explainer.word_maps(pixels, CAPTION, positions, "layercam", layer=b, **options)
            for b in ("block4", "block10")]  # fmt: skip
    scaled = [m / m.max(axis=(1, 2), keepdims=True) for m in each]
    assert fused.shape == (3, 64, 64) and fused.dtype == np.float32
    np.testing.assert_allclose(fused, np.sqrt(scaled[0] * scaled[1]), rtol=1e-4, atol=1e-6)
    assert fused.max() <= 1 + 1e-6
    flat = fuse_maps([each[0], np.zeros_like(each[1])])
    assert not flat.any()


def test_layercam_layer_must_be_a_block_the_features_reach():
    pooled = FeatureExtractorConfig(image_size=64, pool="avg+2x2", pca_dim=6)
    backbone = load_backbone(fold_bn=True)
    explainer = Explainer(rnn_captioner("lstm"), FeaturePipeline(backbone, pooled,
                                                                 small_pca(pooled)))  # fmt: skip
    pixels = shapes_image(64)
    for layer in ("block16", "grid", "stem", "10", "block4,", "block4,grid"):
        with pytest.raises(UserError, match=rf"^layer \(--layer\) must be one of block0 .. "
                           rf"block15, or several joined by commas, got '{layer}'$"):  # fmt: skip
            explainer.word_maps(pixels, CAPTION, [0], "layercam", samples=1, layer=layer)
    with pytest.raises(UserError, match=r"^layer \(--layer\) names a block twice"):
        explainer.word_maps(pixels, CAPTION, [0], "layercam", samples=1, layer="block4,block4")
    assert explainer.word_maps(
        pixels, CAPTION, [0], "layercam", samples=1, layer="block15"
    ).shape == (1, 64, 64)  # pooled: every block runs
    early = FeatureExtractorConfig(image_size=64, grid=True, grid_taps="block10", grid_cells=4,
                                   grid_pca_dim=None)  # fmt: skip
    grid_explainer = Explainer(attention_captioner(D=112),
                               FeaturePipeline(backbone, early, layout="grid"))  # fmt: skip
    with pytest.raises(UserError, match=r"^layer block12 is deeper than this model's features "
                       r"reach: its grid reads block10, and the network stops there$"):  # fmt: skip
        grid_explainer.word_maps(pixels, CAPTION, [0], "layercam", samples=1, layer="block12")
    with pytest.raises(UserError, match=r"^layer block12 is deeper"):
        grid_explainer.word_maps(pixels, CAPTION, [0], "layercam", samples=1,
                                 layer="block4,block12")  # fmt: skip
    maps = grid_explainer.word_maps(pixels, CAPTION, [0, 1], "layercam", samples=1)  # default
    assert maps.shape == (2, 64, 64) and maps.max() > 0
    assert all(not m._forward_hooks for m in backbone.modules())


@pytest.mark.parametrize("position", [False, True])
def test_cell_relevance_equals_a_torch_autograd_reference(position):
    """Grad-CAM at the input grid, ReLU(sum_d d log p_t / d A[l, d] * A[l, d]) per cell, by the
    captioner's own backward pass (penalty on: it must cancel) equals the same definition by
    autograd through a PyTorch copy of the attention captioner, float64."""
    model = attention_captioner(position=position)
    A = np.random.RandomState(7).randn(1, 4, 6)
    positions = [3, 0, 2, 0]
    ours = word_cell_relevance(model, A, CAPTION, positions)
    At = torch.from_numpy(A).requires_grad_(True)
    logp = torch_attention_logprobs(model, At, CAPTION)[0]  # (T-1,)
    reference = []
    for t in positions:
        (g,) = torch.autograd.grad(logp[t], At, retain_graph=True)
        reference.append(torch.relu((g * At.detach()).sum(dim=2))[0])
    reference = torch.stack(reference).numpy()  # (K, L)
    assert ours.shape == (4, 4) and ours.dtype == np.float64
    assert (reference > 0).any() and (reference == 0).any()  # the ReLU bites somewhere
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(ours[1], ours[3])  # the same word twice
    assert not np.allclose(ours[0], ours[1])  # negative control: words differ
    assert word_cell_relevance(model, A, CAPTION, []).shape == (0, 4)
    with pytest.raises(ValueError, match=r"positions must be in \[0, 5\), got \[5\]"):
        word_cell_relevance(model, A, CAPTION, [5])
    # with the attention held: the same definition, autograd with the alphas detached
    held = word_cell_relevance(model, A, CAPTION, positions, hold_attention=True)
    logp = torch_attention_logprobs(model, At, CAPTION, hold_attention=True)[0]
    reference = []
    for t in positions:
        (g,) = torch.autograd.grad(logp[t], At, retain_graph=True)
        reference.append(torch.relu((g * At.detach()).sum(dim=2))[0])
    np.testing.assert_allclose(held, torch.stack(reference).numpy(), rtol=1e-9, atol=1e-12)
    assert not np.allclose(held, ours)


def test_gradcam_maps_put_each_cell_on_its_pixels():
    """Upsampling: a cell's relevance lands on the pixels of that cell (row-major cells over
    the S x S input); Guided Grad-CAM keeps the pixel map there and removes it elsewhere; the
    explainer's gradcam map is its cell relevance upsampled, its peak the top cell's centre."""
    cells = np.zeros((2, 4))
    cells[0, 1] = 2.0  # top right of 2x2 cells over 8 px
    cells[1, 2] = 1.0  # bottom left
    pixel = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32) + 0.1
    guided = guided_gradcam(pixel, cells, side=2)
    assert guided.shape == (2, 8, 8) and guided.dtype == np.float32
    np.testing.assert_allclose(guided[0, :2, 6:], 2.0 * pixel[0, :2, 6:])  # the cell's corner
    assert (guided[0, 6:, :2] == 0).all() and (guided[1, :2, 6:] == 0).all()  # the far corner
    assert guided[1, 4:, :4].sum() > 0.75 * guided[1].sum()
    with pytest.raises(ValueError, match="same K words"):
        guided_gradcam(pixel, cells[:1], side=2)
    config = FeatureExtractorConfig(image_size=64, grid=True, grid_pca_dim=6)
    raw = np.random.default_rng(5).random((40, config.grid_raw_dim), dtype=np.float32)
    pipeline = FeaturePipeline(load_backbone(fold_bn=True), config, layout="grid",
                               grid_pca=fit_pca(raw, 6).with_unit_rms(raw))  # fmt: skip
    explainer = Explainer(attention_captioner(), pipeline)
    pixels = shapes_image(64, seed=1)
    relevance = word_cell_relevance(explainer.captioner, explainer.features(pixels), CAPTION,
                                    [0, 1, 2, 3])  # fmt: skip
    np.testing.assert_array_equal(explainer.cell_relevance(pixels, CAPTION, [0, 1, 2, 3]),
                                  relevance)  # fmt: skip
    result = explainer.explain(pixels, "gradcam", caption_ids=CAPTION)
    for w in result.words:
        np.testing.assert_allclose(w.saliency, attention_to_pixels(relevance[w.position:
                                   w.position + 1], 2, 64)[0], rtol=1e-6)  # fmt: skip
        assert w.peak == cell_peak(relevance[w.position], 64)
    # a word whose relevance is zero in every cell (ReLU of a negative or zero gradient
    # times input) gets no peak rather than the first cell's centre
    flat = relevance.copy()
    flat[2] = 0.0
    explainer.cell_relevance = lambda *args, **kwargs: flat[np.asarray(args[2])]
    result = explainer.explain(pixels, "gradcam", caption_ids=CAPTION)
    assert result.words[2].peak is None and not result.words[2].saliency.any()
    assert all(w.peak is not None for k, w in enumerate(result.words) if flat[k].max() > 0)
    del explainer.cell_relevance
    smooth = explainer.word_maps(pixels, CAPTION, [1, 3], "smoothgrad", samples=2)
    np.testing.assert_allclose(
        explainer.word_maps(pixels, CAPTION, [1, 3], "guided-gradcam", samples=2),
        guided_gradcam(smooth, relevance[[1, 3]], 2), rtol=1e-6,
    )  # fmt: skip


def test_grid_methods_on_a_pooled_captioner_fail_naming_method_and_model():
    config = FeatureExtractorConfig(image_size=64, pool="avg+2x2", pca_dim=6)
    explainer = Explainer(rnn_captioner("lstm"), FeaturePipeline(load_backbone(fold_bn=True),
                          config, small_pca(config)))  # fmt: skip
    for method in ("gradcam", "guided-gradcam"):
        message = rf"^method {method} needs a captioner over a grid of cells; this CaptioningRNN"
        with pytest.raises(UserError, match=message + " reads one pooled feature vector"):
            explainer.explain(shapes_image(64), method, caption_ids=CAPTION)


def test_explain_leaves_the_callers_backbone_as_found():
    backbone = load_backbone()
    backbone.train()  # a caller in the middle of something: training mode, weights trainable
    backbone._blocks[3].eval()
    for p in backbone._blocks[0].parameters():
        p.requires_grad_(True)
    before = {
        "training": [m.training for m in backbone.modules()],
        "flags": [p.requires_grad for p in backbone.parameters()],
        "params": [p.detach().clone() for p in backbone.parameters()],
        "buffers": [b.clone() for b in backbone.buffers()],
    }
    config = FeatureExtractorConfig(image_size=64, fold_bn=False, channels_last=False)
    explainer = Explainer(rnn_captioner("lstm", D=1280), FeaturePipeline(backbone, config))
    pixels = shapes_image(64)
    kept = pixels.copy()
    for method in ("vanilla", "smoothgrad", "layercam"):
        explainer.explain(pixels, method, caption_ids=CAPTION, samples=2)
    assert all(not m._forward_hooks for m in backbone.modules())  # LayerCAM's hook removed
    explainer.deletion(pixels, CAPTION, 1, np.random.default_rng(0).random((64, 64)), n_steps=2)
    assert [m.training for m in backbone.modules()] == before["training"]
    assert [p.requires_grad for p in backbone.parameters()] == before["flags"]
    assert all(p.grad is None for p in backbone.parameters())
    for a, b in zip(backbone.parameters(), before["params"], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(backbone.buffers(), before["buffers"], strict=True):  # BN statistics
        assert torch.equal(a, b)
    np.testing.assert_array_equal(pixels, kept)
    # and the maps are eval-mode maps (batch statistics would make them differ)
    eval_explainer = Explainer(explainer.captioner,
                               FeaturePipeline(load_backbone(), config))  # fmt: skip
    a = explainer.explain(pixels, caption_ids=CAPTION).words[1].saliency
    b = eval_explainer.explain(pixels, caption_ids=CAPTION).words[1].saliency
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(b).max())


def test_explanation_words_positions_and_deletion():
    config = FeatureExtractorConfig(image_size=64, pool="avg+2x2", pca_dim=6)
    pca = small_pca(config, seed=2)
    explainer = Explainer(rnn_captioner("gru"), FeaturePipeline(load_backbone(fold_bn=True),
                          config, pca))  # fmt: skip
    pixels = shapes_image(64, seed=3)
    result = explainer.explain(pixels, "vanilla", caption_ids=CAPTION)
    assert result.caption == "w5 w9 w4 w7"
    assert [w.position for w in result.words] == [0, 1, 2, 3]
    logp, _ = word_logprobs(explainer.captioner, explainer.features(pixels), CAPTION)
    for w in result.words:
        assert w.saliency.shape == (64, 64) and w.saliency.dtype == np.float32
        assert w.attention is None and w.peak == map_peak(w.saliency)
        assert w.prob == pytest.approx(np.exp(logp[0, w.position]))
    probs, auc = explainer.deletion(pixels, CAPTION, 2, result.words[2].saliency, n_steps=4)
    assert probs.shape == (5,) and probs[0] == pytest.approx(result.words[2].prob, rel=1e-4)
    assert 0 <= auc <= 1
    np.testing.assert_array_equal(explainer.encode("w5 w9 w4 w7"), CAPTION)
    with pytest.raises(UserError, match=r"not in the model's vocabulary: \['dog'\]"):
        explainer.encode("w5 dog")
    decoded = explainer.decode(pixels, beam=2)
    assert decoded[0] == 1 and decoded.ndim == 1
    assert explainer.explain(pixels, caption_ids=np.array([1, 2])).words == []


def test_explanation_of_an_attention_captioner_has_each_words_attention():
    """Each word of an attention captioner's explanation carries its step's attention: the
    cell weights the decoding interface gives, and their pixel map, peaking in the top cell;
    the figure draws them in a second row, beneath the image's grid of cells."""
    from captionlab.explain.figure import explanation_figure

    config = FeatureExtractorConfig(image_size=64, grid=True, grid_pca_dim=6)
    cells = np.random.default_rng(5).random((40, config.grid_raw_dim), dtype=np.float32)
    grid_pca = fit_pca(cells, 6).with_unit_rms(cells)
    pipeline = FeaturePipeline(load_backbone(fold_bn=True), config, layout="grid",
                               grid_pca=grid_pca)  # fmt: skip
    explainer = Explainer(attention_captioner(), pipeline)
    pixels = shapes_image(64, seed=1)
    result = explainer.explain(pixels, "vanilla", caption_ids=CAPTION)
    assert result.has_attention and len(result.words) == 4
    _, alpha = word_logprobs(explainer.captioner, explainer.features(pixels), CAPTION)
    np.testing.assert_array_equal(explainer.attention_maps(pixels, CAPTION),
                                  attention_to_pixels(alpha[0], 2, 64))  # fmt: skip
    for w in result.words:
        np.testing.assert_allclose(w.attention_cells, alpha[0, w.position], rtol=1e-6)
        assert w.attention.shape == (64, 64) and w.attention_cells.shape == (4,)
        row, col = divmod(int(np.argmax(w.attention_cells)), 2)
        x, y = map_peak(w.attention)
        assert 32 * col <= x < 32 * (col + 1) and 32 * row <= y < 32 * (row + 1)
        assert w.attention_peak == (32 * col + 16, 32 * row + 16)  # the top cell's centre
    fig = explanation_figure(pixels, result)
    axes = fig.axes
    assert len(axes) == 10 and [ax.get_title() for ax in axes[5:]] == ["attention", "w5", "w9",
                                                                      "w4", "w7"]  # fmt: skip
    assert axes[5].get_xlabel() == "over 2x2 cells" and len(axes[5].lines) == 2  # the grid
    top = float(result.words[0].attention_cells.max())
    assert axes[6].get_xlabel() == f"top cell {top:.2f}"


# ------------------------------------------------------------------ geometry and attention
def test_crop_geometry_maps_input_pixels_back_to_the_original(tmp_path):
    """A marker drawn in a 150x90 photo comes back where it was after load_image's resize and
    centre crop and CropGeometry's inverse (to within one input pixel's footprint)."""
    w, h, S = 150, 90, 45
    marker = (95, 30)  # inside the centred 90x90 square (columns 30..119)
    pixels = np.full((h, w, 3), 20, np.uint8)
    pixels[marker[1] - 1 : marker[1] + 2, marker[0] - 1 : marker[0] + 2] = 255
    Image.fromarray(pixels).save(tmp_path / "p.png")
    small = load_image(tmp_path / "p.png", S).astype(int).sum(axis=2)
    geo = CropGeometry.of_image(tmp_path / "p.png", S)
    assert (geo.width, geo.height, geo.side) == (150, 90, 90)
    ox, oy = geo.to_original(*map_peak(small))
    assert abs(ox - marker[0]) <= 2 and abs(oy - marker[1]) <= 2
    assert geo.to_original(0, 0) == (31, 1)  # input pixel 0's centre: 30 + 0.5 * 2
    assert geo.to_original(S - 1, S - 1) == (119, 89)


def test_attention_to_pixels_puts_each_cell_where_it_is():
    alpha = np.zeros((2, 4))
    alpha[0, 2] = 1.0  # row 1, column 0: bottom left
    alpha[1, 1] = 1.0  # top right
    up = attention_to_pixels(alpha, side=2, size=8)
    assert up.shape == (2, 8, 8)
    assert up[0].max() == 1.0 and map_peak(up[0]) == (0, 6)  # the cell centre's row
    assert up[0, 4:, :4].sum() > 0.75 * up[0].sum()  # bilinear: a little spills over
    assert up[1, :4, 4:].sum() > 0.75 * up[1].sum() and map_peak(up[1]) == (6, 0)
    with pytest.raises(ValueError, match=r"attention must be \(K, 4\)"):
        attention_to_pixels(np.zeros((2, 5)), side=2, size=8)


def test_the_attention_peak_is_its_top_cells_centre():
    """Beyond the outer cells' centres the pixel map is flat: its first maximum would sit on
    the image's edge, the cell's centre is where the attention points."""
    alpha = np.full(25, 0.5 / 24)
    alpha[2 * 5 + 0] = 0.5  # row 2, column 0 of a 5x5 grid over 160 px: centre (16, 80)
    assert cell_peak(alpha, 160) == (16, 80)
    assert map_peak(attention_to_pixels(alpha[None], 5, 160)[0])[0] == 0  # on the edge
    alpha = np.roll(alpha, 9)  # row 3, column 4
    assert cell_peak(alpha, 160) == (144, 112) and cell_peak(alpha, 45) == (40, 31)
    with pytest.raises(ValueError, match="s\\*s cell weights, got 24"):
        cell_peak(np.ones(24), 160)


def test_a_flat_map_has_no_peak():
    """A word no cell raises has an all-zero Grad-CAM map: it points nowhere, not at the
    first cell (the top-left corner) as argmax would."""
    assert cell_peak(np.zeros(25), 160) is None and map_peak(np.zeros((8, 8))) is None
    assert map_peak(np.full((4, 4), 0.3)) is None
    m = np.zeros((8, 8))
    m[5, 2] = 1e-12  # any variation at all is a peak
    assert map_peak(m) == (2, 5) and cell_peak(m.reshape(-1), 8) == (2, 5)  # 1-px cells


@pytest.mark.parametrize("scaled", [True, False])
def test_grid_pipeline_features_equal_the_feature_extractor(scaled):
    """The grid layout makes the extractor's grid (block10 + the last map per cell, the
    per-cell PCA and its scale), equal up to the store's float16 rounding."""
    config = FeatureExtractorConfig(image_size=64, pool="avg", grid=True, grid_pca_dim=6)
    rng = np.random.default_rng(1)
    cells = rng.random((60, config.grid_raw_dim), dtype=np.float32)
    grid_pca = fit_pca(cells, 6)
    if scaled:
        grid_pca = grid_pca.with_unit_rms(cells)
        assert grid_pca.scale != 1.0
    extractor = FeatureExtractor(config, grid_pca=grid_pca, workers=0)
    assert_pipeline_grid_equals_the_extractors(extractor, (2, config.grid_len, 6))


def assert_pipeline_grid_equals_the_extractors(extractor: FeatureExtractor, shape) -> None:
    """The grid layout of ``extractor``'s config, on two images, equals the extractor's grid
    up to the store's float16 rounding."""
    images = np.stack([shapes_image(64, s) for s in range(2)])
    _, expected = extractor.transform_images_with_grid(images)  # (2, L, Dg)
    pipeline = FeaturePipeline(extractor.model, extractor.config, layout="grid",
                               grid_pca=extractor.grid_pca)  # fmt: skip
    with torch.no_grad():
        got = pipeline(preprocess(images)).numpy()
    assert got.shape == expected.shape == shape
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())


def test_a_grid_of_early_taps_stops_the_backbone_there():
    """A grid read from block10 alone (raw cells, finer than the last map) equals the
    extractor's, and the pipeline never runs the layers after block10 (the head's conv)."""
    config = FeatureExtractorConfig(image_size=64, grid=True, grid_taps="block10",
                                    grid_cells=4, grid_pca_dim=None)  # fmt: skip
    extractor = FeatureExtractor(config, workers=0)
    model = extractor.model
    x = preprocess(shapes_image(64))
    calls = []
    hook = model._conv_head.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            FeaturePipeline(model, config, layout="grid")(x)
            assert calls == []  # the grid reads nothing past block10
            with_head = FeatureExtractorConfig(image_size=64, grid=True, grid_pca_dim=None)
            FeaturePipeline(model, with_head, layout="grid")(x)
        assert calls == [1]  # negative control: block10+grid runs the head once
    finally:
        hook.remove()
    assert_pipeline_grid_equals_the_extractors(extractor, (2, 16, 112))


def test_grid_layout_needs_a_grid_config_and_its_pca():
    backbone = load_backbone(fold_bn=True)
    with pytest.raises(UserError, match="makes none"):
        FeaturePipeline(backbone, FeatureExtractorConfig(image_size=64), layout="grid")
    config = FeatureExtractorConfig(image_size=64, grid=True, grid_pca_dim=6)
    with pytest.raises(UserError, match=r"extra\.grid_pca is missing"):
        FeaturePipeline(backbone, config, layout="grid")


def test_figure_has_a_panel_per_word_and_an_attention_row_when_given():
    from captionlab.explain import Explanation, WordMap
    from captionlab.explain.figure import explanation_figure

    rng = np.random.default_rng(0)
    pixels = shapes_image(32)

    def result(attention: bool) -> Explanation:
        words = [
            WordMap(w, t, 0.5, rng.random((32, 32), dtype=np.float32),
                    rng.random((32, 32), dtype=np.float32) if attention else None, (1, 2))
            for t, w in enumerate(["red", "square"])
        ]  # fmt: skip
        return Explanation("red square", CAPTION[:4], "smoothgrad", words)

    fig = explanation_figure(pixels, result(False))
    assert len(fig.axes) == 3 and [ax.get_title() for ax in fig.axes] == ["image", "red", "square"]
    assert "attention held" not in fig.axes[0].get_xlabel()
    fig = explanation_figure(pixels, result(True))
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 6 and titles[3:] == ["attention", "red", "square"]
    held = result(True)
    held.hold_attention = True  # the first panel says how the maps were taken
    assert "attention held" in explanation_figure(pixels, held).axes[0].get_xlabel()
