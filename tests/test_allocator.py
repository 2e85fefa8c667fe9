"""Freed memory kept in the process: a batch's large tensors reuse the previous batch's pages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Allocates and fills a large tensor several times; prints the minor page faults of the last rounds (the
# first ones may place the block anew while small allocations settle around it).
ROUNDS = """
import json, resource, sys
import torch
from vcf.models.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(BYTES, dtype=torch.uint8)
    block.fill_(1)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults[-3:]}))
"""
BYTES = 64 * 2**20  # over glibc's largest mmap threshold (32 MiB): mapped afresh each time by default
PAGE = 4096


def rounds(mode: str) -> dict:
    code = ROUNDS.replace("BYTES", str(BYTES))
    done = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_blocks_reuse_freed_memory() -> None:
    default, kept = rounds("default"), rounds("keep")
    # By default every round faults in each page of the block afresh (transparent huge pages would
    # make it fewer, never none).
    assert min(default["faults"]) > 0
    assert kept["kept"] is True
    assert max(kept["faults"]) < BYTES / PAGE / 100
    assert max(kept["faults"]) < min(default["faults"])
