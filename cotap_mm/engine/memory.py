"""Peak resident memory of this process on Linux, for the benchmarks' CPU rows.

The kernel's high-water mark (``VmHWM`` in ``/proc/self/status``) is reset by writing ``5`` to
``/proc/self/clear_refs``; reading it back after a call gives the call's peak. Only the standard
library is used, so a benchmark may load this file by path without importing the OpenMMLab stack.
"""
from typing import Optional

__all__ = ['status_kb', 'reset_peak_rss']


def status_kb(key: str) -> Optional[int]:
    """A ``kB`` entry of ``/proc/self/status`` (e.g. ``'VmRSS'``, ``'VmHWM'``); None where unreadable."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS; False where ``/proc/self/clear_refs`` is not writable."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False
