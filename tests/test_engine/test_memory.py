"""Peak resident memory helpers of the benchmarks (Linux /proc)."""
import os.path as osp
import sys

import numpy as np
import pytest

from cotap_mm.engine.memory import reset_peak_rss, status_kb

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux') or
                                not osp.exists('/proc/self/status'), reason='Linux /proc only')


def test_peak_follows_an_allocation_after_a_reset():
    assert status_kb('VmRSS') > 0 and status_kb('NoSuchKey') is None
    if not reset_peak_rss():
        pytest.skip('/proc/self/clear_refs is not writable here')
    before = status_kb('VmRSS')
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
    peak = status_kb('VmHWM')
    del block
    assert peak - before >= 60 * 1024  # kB
    assert reset_peak_rss() and status_kb('VmHWM') < peak
