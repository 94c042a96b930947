"""A checkpoint is streamed to disk: writing it adds (almost) nothing to the host memory peak.
The old writer cloned every tensor and serialised the whole checkpoint into a bytes buffer first:
about three copies of the weights on top of the process, ~260 GB for 65B on 8 ranks."""

import json
import os
import subprocess
import sys

from paths import ROOT

# One process holding ~256 MB of trainable weights writes an epoch's checkpoint; the resident
# high-water mark is read before and after (glibc's mmap threshold fixed, so freed blocks are
# returned and the peak counts live memory, as lomo memory measures it).
SCRIPT = """
import json, resource, sys, torch
from pathlib import Path
from torch import nn
from lomo.train.runtime import Runtime
model = nn.Sequential(nn.Linear(8192, 8192, bias=False))  # 64M fp32 weights: 256 MiB
opt = torch.optim.SGD(model.parameters(), lr=0.1)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
Runtime("single", torch.device("cpu")).save_checkpoint(
    Path(sys.argv[1]) / "checkpoint.pt", 1, model, [opt], {"log": []}
)
print(json.dumps({"before": before, "after": peak(), "weights": 8192 * 8192 * 4}))
"""


def test_writing_a_checkpoint_adds_at_most_a_tenth_of_the_weights(tmp_path):
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.splitlines()[-1])
    added = measured["after"] - measured["before"]
    assert added <= 0.1 * measured["weights"], measured
    assert (tmp_path / "checkpoint.pt").stat().st_size >= measured["weights"]
