"""The explain methods by name: one list for the library, the command line and the server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from captionlab.errors import UserError
from captionlab.explain.methods import (
    GRID_METHODS,
    LAYER_METHODS,
    METHODS,
    PIXEL_METHODS,
    check_method,
    methods_for,
)


def test_the_pixel_methods_are_the_saliency_methods_then_layercam_then_the_grid_ones():
    from captionlab.vision import saliency

    assert PIXEL_METHODS == saliency.METHODS == ("vanilla", "smoothgrad", "ig")
    assert LAYER_METHODS == ("layercam",)
    assert GRID_METHODS == ("gradcam", "guided-gradcam")
    assert METHODS == PIXEL_METHODS + LAYER_METHODS + GRID_METHODS
    assert methods_for("pooled") == PIXEL_METHODS + LAYER_METHODS
    assert methods_for("grid") == METHODS
    with pytest.raises(ValueError, match="layout must be one of pooled, grid, got 'cells'"):
        methods_for("cells")


def test_check_method_names_the_method_and_the_captioner():
    for method in METHODS:
        check_method(method, "grid", "this AttentionCaptioner")  # every method: no error
    for method in PIXEL_METHODS + LAYER_METHODS:
        check_method(method, "pooled", "this CaptioningRNN")
    for method in GRID_METHODS:
        with pytest.raises(UserError) as err:
            check_method(method, "pooled", "model 'lstm' (lstm)")
        assert str(err.value) == (
            f"method {method} needs a captioner over a grid of cells; model 'lstm' (lstm) reads "
            "one pooled feature vector (use vanilla, smoothgrad, ig, layercam)"
        )
    with pytest.raises(UserError, match=r"must be one of vanilla, .*guided-gradcam, got 'cam'"):
        check_method("cam", "grid", "this AttentionCaptioner")


def test_the_names_load_without_torch_and_the_command_lists_them():
    """The command line and the server read the names without loading torch or a captioner
    (``import captionlab.explain`` loads its modules on first use)."""
    code = (
        "import sys\n"
        "heavy = lambda: [m for m in ('torch', 'h5py', 'captionlab.explain.pipeline',\n"
        "                              'captionlab.captioning') if m in sys.modules]\n"
        "from captionlab.explain.methods import METHODS\n"
        "print(heavy(), METHODS)\n"
        "from captionlab.cli import build_parser\n"
        "build_parser()\n"
        "print('torch' in sys.modules, 'captionlab.explain.pipeline' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"[] {METHODS}", "False False"]
    from captionlab.cli import explain_cmd
    from captionlab.explain import Explainer  # the lazy package still gives every name

    assert explain_cmd.METHODS is METHODS and Explainer.__name__ == "Explainer"
