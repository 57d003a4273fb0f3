"""examples/rnn_captioning.ipynb, lstm_captioning.ipynb, attention_captioning.ipynb and
transformer_captioning.ipynb run top
to bottom, checks holding.

Each notebook asserts its own checks (fixed forward values, gradient checks, overfitting);
these tests run them in a fresh kernel of this interpreter and re-read the printed numbers.
Both share one data folder, so the second reuses the first's shapes images and features.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import install as install_kernelspec
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NUMBER = r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
FORWARD_VALUES = {"next_h", "next_c", "h", "out"}  # fixed-input checks against cs231n's values


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A "python3" kernel spec that runs this interpreter, and the kernel's environment.

    The spec goes into a temporary prefix put first on JUPYTER_PATH, so whatever kernels the
    machine has, the notebooks run with the interpreter (and captionlab) under test.
    """
    prefix = tmp_path_factory.mktemp("kernel")
    install_kernelspec(kernel_name="python3", prefix=str(prefix))
    data_dir = tmp_path_factory.mktemp("captionlab-examples")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
        env = dict(os.environ)
        env["CAPTIONLAB_EXAMPLES_DIR"] = str(data_dir)
        # One thread for torch and BLAS: on a busy 2-core machine small matrices and small
        # batches run faster so than with threads spinning against other processes.
        env["OMP_NUM_THREADS"] = "1"
        yield env


def run_notebook(name: str, env: dict, tmp_path: Path) -> tuple[nbformat.NotebookNode, str]:
    """Execute examples/<name> (raises on the first failing cell); return it and its stdout."""
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=env)
    text = "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream" and out.get("name") == "stdout"
    )
    return nb, text


def images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


def check_gradients(text: str, n_layer_checks: int) -> None:
    """Every printed check: forward values < 1e-7, layer gradients < 1e-5 (the step layers
    well below), whole-model gradients < 1e-5, the cs231n fixed loss to 1e-10."""
    layer = [(m[1], float(m[2])) for m in re.finditer(rf"^(\w+) error:\s+{NUMBER}$", text, re.M)]
    assert len(layer) == n_layer_checks, layer
    for name, err in layer:
        assert err < (1e-7 if name in FORWARD_VALUES else 1e-5), (name, err)
    assert sorted(err for _, err in layer)[len(layer) // 2] < 1e-7  # most are far below
    model = re.findall(rf"^(\w+) relative error:\s+{NUMBER}$", text, re.M)
    names = {"W_embed", "W_proj", "b_proj", "Wx", "Wh", "b", "W_vocab", "b_vocab"}
    assert {name for name, _ in model} == names
    assert all(float(err) < 1e-5 for _, err in model), model
    assert float(re.search(rf"^difference:\s+{NUMBER}$", text, re.M)[1]) < 1e-10


def check_loss_at_init(text: str) -> None:
    per_word, log_v = re.search(rf"per word: {NUMBER}, log V = log \d+ = {NUMBER}", text).groups()
    assert float(per_word) == pytest.approx(float(log_v), rel=0.1)


def metrics_table(text: str) -> dict[str, dict[str, float]]:
    """The printed metrics table -> {row name: {column: value}}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("BLEU-1"))
    columns = lines[start].split()
    rows = {}
    for line in lines[start + 2 :]:
        m = re.match(r"^((?:RNN|LSTM) (?:greedy|beam 3))\s+(.*)$", line)
        if not m:
            break
        rows[m[1]] = dict(zip(columns, map(float, m[2].split()), strict=True))
    return rows


def test_rnn_captioning_notebook(kernel_env, tmp_path):
    nb, text = run_notebook("rnn_captioning.ipynb", kernel_env, tmp_path)
    # next_h, 5 step grads, h, 5 sequence grads, embedding out + dW, 3 temporal affine, softmax dx
    check_gradients(text, n_layer_checks=18)
    check_loss_at_init(text)
    assert float(re.search(rf"^Final loss:\s+{NUMBER}$", text, re.M)[1]) < 0.5
    table = metrics_table(text)
    assert set(table) == {"RNN greedy", "RNN beam 3"}
    for row in table.values():
        assert row["BLEU-4"] > 0.25  # it learned (an untrained model scores about 0)
        assert 0 <= row["object_f1"] <= 1
    assert images(nb) >= 5  # data, overfit loss, overfit samples, training curves, captions


# 1-2 minutes each: in the slow set, which CI runs after the default one (make test-slow)
@pytest.mark.slow
def test_lstm_captioning_notebook(kernel_env, tmp_path):
    nb, text = run_notebook("lstm_captioning.ipynb", kernel_env, tmp_path)
    # next_h, next_c, 6 step grads, h, 5 sequence grads
    check_gradients(text, n_layer_checks=14)
    check_loss_at_init(text)
    assert float(re.search(rf"^Final loss:\s+{NUMBER}$", text, re.M)[1]) < 0.5
    table = metrics_table(text)
    assert set(table) == {"RNN greedy", "RNN beam 3", "LSTM greedy", "LSTM beam 3"}
    for row in table.values():
        assert row["BLEU-4"] > 0.25
    assert images(nb) >= 5


# 1-2 minutes each: in the slow set, which CI runs after the default one (make test-slow)
@pytest.mark.slow
def test_transformer_captioning_notebook(kernel_env, tmp_path):
    nb, text = run_notebook("transformer_captioning.ipynb", kernel_env, tmp_path)
    # against torch: MultiHeadAttention (2 cases), the decoder layer; finite differences
    for case in ("self_attention_causal", "cross_attention"):
        line = re.search(rf"^{case} (.*)$", text, re.M)[1]
        errors = [float(e) for e in re.findall(rf"\w+ {NUMBER}", line)]
        assert len(errors) == 6 and max(errors) < 1e-7, (case, line)
    layer = dict(re.findall(rf"^(\w+) error:\s+{NUMBER}$", text, re.M))
    expected = {"dquery", "dkey_value", "dWq", "dbv", "dWk", "dWo", "pe_output", "out", "dx",
                "dmemory", "dW1", "dgamma3", "dgamma", "dbeta"}  # fmt: skip
    assert set(layer) == expected, set(layer) ^ expected
    assert all(float(e) < 1e-7 for e in layer.values()), layer
    model = re.findall(rf"^([\w.]+) relative error:\s+{NUMBER}$", text, re.M)
    assert len(model) == 2 * 26 + 5 - 4  # every parameter but the attentions' bk (gradient 0)
    assert all(float(e) < 1e-5 for _, e in model), model
    check_loss_at_init(text)
    assert float(re.search(rf"^Final loss per word:\s+{NUMBER}$", text, re.M)[1]) < 0.03
    reproduced = re.search(r"memorised captions reproduced: (\d+) of 50", text)
    assert int(reproduced[1]) >= 48
    table = {}
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("BLEU-1"))
    columns = lines[start].split()
    for line in lines[start + 2 :]:
        m = re.match(r"^(Transformer (?:pooled|grid) (?:greedy|beam 3))\s+(.*)$", line)
        if not m:
            break
        values = [float("nan") if v == "n/a" else float(v) for v in m[2].split()]
        table[m[1]] = dict(zip(columns, values, strict=True))  # n/a: no relation named
    assert len(table) == 4, table
    for row in table.values():
        assert row["BLEU-4"] > 0.25  # it learned (an untrained model scores about 0)
        assert 0 <= row["object_f1"] <= 1
    assert images(nb) >= 4  # positional encoding, overfit loss, training curves, attention


# 1-2 minutes each: in the slow set, which CI runs after the default one (make test-slow)
@pytest.mark.slow
def test_attention_captioning_notebook(kernel_env, tmp_path):
    nb, text = run_notebook("attention_captioning.ipynb", kernel_env, tmp_path)
    layer = dict(re.findall(rf"^(\w+) error:\s+{NUMBER}$", text, re.M))
    assert set(layer) == {"dA", "dWa", "dh", "dWh", "db", "dw"}
    assert all(float(e) < 1e-6 for e in layer.values()), layer
    model = dict(re.findall(rf"^(\w+) relative error:\s+{NUMBER}$", text, re.M))
    names = {
        "W_embed",
        "W_h0",
        "b_h0",
        "W_c0",
        "b_c0",
        "W_att_a",
        "W_att_h",
        "b_att",
        "w_att",
        "W_beta",
        "b_beta",
        "Wx",
        "Wz",
        "Wh",
        "b",
        "W_vocab",
        "b_vocab",
        "W_pos",
        "grid",
    }
    assert set(model) == names and all(float(e) < 1e-5 for e in model.values()), model
    check_loss_at_init(text)
    assert float(re.search(rf"^Final loss:\s+{NUMBER}$", text, re.M)[1]) < 0.5
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("BLEU-4"))
    columns = lines[start].split()
    rows = {}
    for line in lines[start + 2 :]:
        m = re.match(r"^((?:LSTM|Attention) (?:greedy|beam 3))\s+(.*)$", line)
        if m:
            rows[m[1]] = dict(zip(columns, map(float, m[2].split()), strict=True))
    assert set(rows) == {"LSTM greedy", "LSTM beam 3", "Attention greedy", "Attention beam 3"}
    for row in rows.values():
        assert row["BLEU-4"] > 0.25  # both learned
    # PCA maps, overfit loss, curves, one attention strip per scene size (1-3 objects)
    assert images(nb) >= 6


def test_notebooks_are_committed_without_outputs():
    for name in ("rnn_captioning.ipynb", "lstm_captioning.ipynb", "attention_captioning.ipynb",
                 "transformer_captioning.ipynb"):  # fmt: skip
        nb = nbformat.read(EXAMPLES / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), name
        # cs231n's code with only the imports changed: nothing but captionlab is imported
        # beyond the standard library, numpy and matplotlib.
        source = "\n".join(c.source for c in code)
        imported = set(re.findall(r"^(?:from|import) (\w+)", source, re.M))
        # the Transformer notebook checks its layers against PyTorch's
        torch = {"torch"} if name.startswith("transformer") else set()
        allowed = torch | {
            "captionlab",
            "matplotlib",
            "numpy",
            "os",
            "pathlib",
            "tempfile",
            "textwrap",
            "time",
        }
        assert imported <= allowed, imported - allowed
