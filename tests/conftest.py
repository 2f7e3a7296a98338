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
