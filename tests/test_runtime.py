"""tinygpt.runtime: malloc keeps freed memory for reuse, so a training step stops faulting in
fresh pages for every activation."""
import subprocess
import sys

import pytest

CHILD = """
import resource, sys
import numpy as np
from tinygpt.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # True, and safe to call twice
def step():  # allocate like a training step: many 2 MB activations alive at once, then all freed
    arrays = [np.ones(1 << 19, np.float32) for _ in range(8)]
    del arrays
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode):
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_keep_freed_memory_stops_page_faults():
    # 5 steps x 8 arrays x 512 pages of 4 KB: ~20,000 faults when each array gets fresh pages
    default, kept = page_faults("default"), page_faults("keep")
    assert default > 5_000, default  # the problem is real here...
    assert kept < 200, kept          # ...and the settings remove it
