"""captionlab.nn keeps freed memory for reuse (glibc's mallopt), unless told not to.

Checked by what it is for: a buffer allocated, written and freed over and over must not
page-fault its memory back in every time (counted with getrusage, not timed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
{setup}
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step = [np.empty((2048, 1024), dtype=np.float32) for _ in range(4)]  # a step's buffers
    for a in step:
        a[:] = 1.0
    del step, a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[2:]) // 10)
"""


def _faults_per_buffer(setup: str, env_policy: str | None = None) -> int:
    env = None
    if env_policy is not None:
        import os

        env = {**os.environ, "CAPTIONLAB_MALLOC": env_policy}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(setup=setup)],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return int(out.stdout.strip())


pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux) only"
)


def test_importing_nn_keeps_freed_buffers_mapped():
    plain = _faults_per_buffer("")
    if plain < 1000:  # this C library already reuses the pages: nothing to show
        pytest.skip(f"the allocator here already reuses freed pages ({plain} faults)")
    kept = _faults_per_buffer(
        "from captionlab import nn\nassert nn.memory_policy() == 'retain', nn.memory_policy()"
    )
    assert kept < 50, (plain, kept)  # 4 x 2048 pages of 4 KiB without it


def test_the_environment_variable_leaves_malloc_alone():
    setup = "from captionlab import nn\nassert nn.memory_policy() == 'system'"
    assert _faults_per_buffer(setup, env_policy="system") >= 1000 or (
        _faults_per_buffer("") < 1000  # this allocator reuses pages by itself
    )


def test_retain_is_idempotent():
    from captionlab import nn

    first = nn.memory_policy()
    assert nn.retain_freed_memory() == (first == "retain")
    assert nn.memory_policy() == first
