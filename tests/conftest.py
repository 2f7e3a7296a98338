import os.path as osp
import sys

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS_DIR = osp.join(REPO_ROOT, 'tests')
for path in (REPO_ROOT, TESTS_DIR):  # `cotap_test_helpers` lives in tests/
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(scope='session')
def repo_root() -> str:
    return REPO_ROOT


@pytest.fixture(autouse=True)
def _isolate_default_scope():
    """Restore MMEngine's DefaultScope instances after each test.

    A runner built in-process (mmseg / mmdet / mmpretrain configs) leaves its scope current, and
    mmengine then looks every later ``REGISTRY.build`` up in that toolbox's registry; tests must not
    depend on the order they run in.
    """
    from mmengine.registry import DefaultScope
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)


@pytest.fixture
def one_thread():
    """Torch on one thread for in-process training runs (on a loaded 2-core machine two threads
    per process make a tiny step 10x slower); the previous setting is restored."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
