"""Weight matching hands the memory its scratch buffers held back to the system before the aligned copy is built."""
import platform
import sys

import pytest
import torch

from modefuse.storage import heap


def _rss() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_freed_heap_memory_goes_back_to_the_system():
    assert heap._trim() is not None
    big = torch.ones(16 * 2**20 // 4)  # 16 MB: raises glibc's mmap threshold when freed, so later blocks go on the heap
    del big
    blocks = [torch.ones(2 * 2**20 // 4) for _ in range(40)]  # 80 MB of 2 MB blocks, now on the heap
    before = _rss()
    del blocks[:-1]  # all but the top block: freed but kept by the allocator
    kept = _rss()
    heap.release_freed()
    after = _rss()
    assert before - kept < 20 * 2**20 <= kept - after, (before, kept, after)
