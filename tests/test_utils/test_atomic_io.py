"""Atomic writes: a failed or interrupted write never leaves a partial file under the final name."""
import os

import pytest
import torch

from cotap_mm.utils.atomic_io import (atomic_torch_save, atomic_write_text, is_temporary,
                                      temporary_path)


def test_write_replaces_completely(tmp_path):
    path = tmp_path / 'last_checkpoint'
    atomic_write_text(path, 'old')
    atomic_write_text(path, 'new')
    assert path.read_text() == 'new'
    assert os.listdir(tmp_path) == ['last_checkpoint']  # no temporary file left


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / 'iter_2.pth'
    atomic_torch_save({'w': torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('disk full (simulated)')

    with pytest.raises(RuntimeError, match='simulated'):
        atomic_torch_save({'w': torch.zeros(3), 'x': Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)['w'], torch.ones(3))
    assert os.listdir(tmp_path) == ['iter_2.pth']


def test_temporary_names_are_recognised(tmp_path):
    tmp = temporary_path(tmp_path / 'iter_4.pth')
    assert os.path.dirname(tmp) == str(tmp_path)  # same folder: rename is atomic
    assert is_temporary(tmp) and is_temporary(os.path.basename(tmp))
    assert not is_temporary('iter_4.pth') and not is_temporary('.hidden.pth')
