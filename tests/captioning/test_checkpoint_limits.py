"""The checkpoint reader against hostile files: refused from the zip directory and the .npy
headers, before memory is given, with peak memory measured in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from malicious_checkpoints import write_all

from captionlab.captioning import CaptioningRNN, load_checkpoint
from captionlab.captioning import checkpoint as ckpt
from captionlab.captioning.checkpoint import save_checkpoint
from captionlab.errors import CheckpointError

SRC = Path(__file__).resolve().parents[2] / "src"

_MEASURE = textwrap.dedent(
    """
    import json, sys
    from captionlab.captioning import load_checkpoint
    from captionlab.errors import CheckpointError

    def peak_kb():
        # VmHWM: this process's own high-water mark. (getrusage's ru_maxrss carries the
        # parent's peak across fork and exec on Linux, so a big pytest would leak into it.)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

    out = {"baseline_kb": peak_kb()}
    for name, path in json.loads(sys.argv[1]).items():
        try:
            load_checkpoint(path)
            out[name] = "loaded"
        except CheckpointError as exc:
            out[name] = str(exc)
    out["peak_kb"] = peak_kb()
    print(json.dumps(out))
    """
)


def test_hostile_checkpoints_are_refused_in_bounded_memory(tmp_path):
    """Issue 12's files: a 6 MB checkpoint holding an entry that unpacks to 6 GB, headers
    claiming hidden_dim 15000 and 200000, a parameter whose data is a 4 GB bomb, a
    consistent model past the limit. Each is refused; the process never passes 1 GB."""
    files = write_all(tmp_path, bomb_gb=6)
    assert files["zip_bomb_entry"].stat().st_size < 16 << 20
    env = {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps({k: str(v) for k, v in files.items()})],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    peak_mb = result["peak_kb"] / 1024
    print(f"peak RSS over all hostile checkpoints: {peak_mb:.0f} MB "
          f"(after imports: {result['baseline_kb'] / 1024:.0f} MB)")  # fmt: skip
    assert peak_mb < 1024
    assert result["good"] == "loaded"
    assert "holds entries its header does not mention ('padding')" in result["zip_bomb_entry"]
    for name in ("hidden_15000", "hidden_200000", "consistent_too_large"):
        assert "past the limit of 100,000,000" in result[name], result[name]
        assert "hidden_dim=" in result[name]
    assert "'params/W_vocab' must have shape (4, 6), got (1073741824,)" in result["param_bomb"]
    for name, message in result.items():
        if name.endswith("_kb") or name == "good":
            continue
        assert message.startswith(str(files[name])) and "\n" not in message


def _model(dtype=np.float32):
    vocab = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "<UNK>", "a", "b"])}
    return CaptioningRNN(vocab, input_dim=5, wordvec_dim=4, hidden_dim=3, dtype=dtype, seed=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(tmp_path, bad):
    model = _model()
    model.params["Wh"][1, 2] = bad
    path = save_checkpoint(tmp_path / "m.npz", model)
    with pytest.raises(CheckpointError, match=r"m\.npz: array 'params/Wh' holds non-finite"):
        load_checkpoint(path)


def test_inference_skips_the_solver_state(tmp_path, monkeypatch):
    model = _model()
    state = {"moments": {"m": np.ones((3, 3)), "v": np.full((3, 3), np.nan)}, "epoch": 2}
    path = save_checkpoint(tmp_path / "m.npz", model, solver_state=state)
    loaded, saved = load_checkpoint(path, solver_state=False)
    assert saved["solver_state"] is None
    np.testing.assert_array_equal(loaded.params["Wh"], model.params["Wh"])
    with pytest.raises(CheckpointError, match="'state/moments/v' holds non-finite"):
        load_checkpoint(path)


def test_array_sizes_are_checked_before_reading(tmp_path, monkeypatch):
    model = _model()
    path = save_checkpoint(tmp_path / "m.npz", model, extra={"pca": np.zeros((64, 64), np.float32)})
    monkeypatch.setattr(ckpt, "MAX_EXTRA_BYTES", 1000)
    with pytest.raises(CheckpointError, match="arrays of field 'extra' hold 16,384 bytes"):
        load_checkpoint(path)
    monkeypatch.setattr(ckpt, "MAX_EXTRA_BYTES", 1 << 20)
    monkeypatch.setattr(ckpt, "MAX_PARAMETERS", 10)
    with pytest.raises(CheckpointError, match=r"describes 90 parameters, past the limit of 10"):
        load_checkpoint(path)


def test_header_array_references_stay_in_their_part(tmp_path):
    model = _model()
    path = save_checkpoint(tmp_path / "m.npz", model, extra={"w": np.zeros(2)})
    from malicious_checkpoints import _rewrite

    evil = tmp_path / "evil.npz"
    _rewrite(path, evil, lambda h: h["extra"].update(w={"__array__": "params/Wh"})).close()
    with pytest.raises(CheckpointError, match="refers to array 'params/Wh'; expected a name under"):
        load_checkpoint(evil)
