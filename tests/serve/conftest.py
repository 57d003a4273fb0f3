"""Fixtures of the server tests: tiny run folders, the real backbone, a tiny stand-in CNN."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

# Starlette's test client prefers the `httpx2` fork and warns when it runs on `httpx`; the
# warning is about the test client's transport, not about anything the server does.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    import fastapi.testclient  # noqa: F401

from serve_helpers import write_runs


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    return write_runs(tmp_path_factory.mktemp("serve") / "runs")


@pytest.fixture(scope="session")
def registry(runs_dir):
    from captionlab.serve.models import ModelRegistry

    return ModelRegistry.discover([runs_dir])


@pytest.fixture(scope="session")
def engine():
    """The real pretrained EfficientNet-Lite0 (loaded once for the whole session)."""
    from captionlab.serve.cnn import VisionEngine

    return VisionEngine("cpu")


@pytest.fixture(scope="session")
def tiny_engine():
    """A VisionEngine over a tiny CNN with 1000 outputs: every code path, a fraction of the
    time (for the fuzz and the concurrency tests, where many requests do model work)."""
    import torch

    from captionlab.serve.cnn import VisionEngine

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 1000),
    ).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return VisionEngine(model=net)


def make_client(registry, engine, **config):
    from fastapi.testclient import TestClient

    from captionlab.serve import ServeConfig, create_app

    app = create_app(ServeConfig(**config), registry=registry, engine=engine)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(registry, engine):
    """The app with the real backbone and the two tiny captioners."""
    with make_client(registry, engine) as c:
        yield c


@pytest.fixture(scope="module")
def tiny_client(registry, tiny_engine):
    with make_client(registry, tiny_engine) as c:
        yield c
