"""examples/network_visualization.ipynb runs top to bottom and tells cs231n's story right."""

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "network_visualization.ipynb"


def test_network_visualization_notebook_runs(tmp_path, monkeypatch):
    # one thread: the notebook's small batches run faster so on a busy 2-core machine
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    images = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(images) >= 6  # classify, 3 saliency figures, fooling, class visualization
    last = nb.cells[-1].outputs[-1]["text"].strip().splitlines()[-1]
    results = json.loads(last)
    assert results["predicted"][:2] == ["Egyptian cat", "espresso"]
    assert results["saliency_shape"] == [3, 224, 224]
    assert results["fooled_to"] == "tree frog"
    assert results["pgd_success"] and results["pgd_linf_x255"] <= 4 + 1e-4
    assert min(results["class_viz_probs"]) > 0.5
    assert results["cs231n_shape"] == [1, 3, 224, 224]
