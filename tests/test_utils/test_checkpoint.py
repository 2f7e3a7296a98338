import fractions
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner import load_checkpoint

from cotap_mm.utils.checkpoint import (UnsafeCheckpointError, checkpoint_problem,
                                       find_resumable_checkpoint, from_plain, safe_torch_load,
                                       to_plain, trust_checkpoint, trusted_checkpoint)


def test_plain_round_trip_of_message_hub_state():
    hub = MessageHub('test_plain_round_trip')
    for i in range(5):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
    hub.update_info('iter', np.int64(7))
    hub.update_info('arr', np.arange(6, dtype=np.float32).reshape(2, 3))
    state = hub.state_dict()
    plain = to_plain({'message_hub': state, 'meta': {'seed': np.int32(3), 'shape': (1, 2)}})
    restored = from_plain(plain)
    buf = restored['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer)
    np.testing.assert_allclose(buf.data[0], state['log_scalars']['train/loss'].data[0])
    assert buf.current() == pytest.approx(0.2)
    assert restored['message_hub']['runtime_info']['iter'] == 7
    arr = restored['message_hub']['runtime_info']['arr']
    assert arr.dtype == np.float32 and arr.shape == (2, 3)
    assert restored['meta'] == {'seed': 3, 'shape': (1, 2)}
    assert isinstance(restored['message_hub']['log_scalars'], OrderedDict)


def test_plain_checkpoint_loads_weights_only(tmp_path):
    hub = MessageHub('test_plain_weights_only')
    hub.update_scalar('loss', 0.5)
    ckpt = {'state_dict': {'w': torch.ones(2)}, 'message_hub': to_plain(hub.state_dict())}
    path = tmp_path / 'plain.pth'
    torch.save(ckpt, path)
    loaded = torch.load(path, weights_only=True)
    assert from_plain(loaded['message_hub'])['log_scalars']['loss'].current() == 0.5
    # the same checkpoint without conversion is refused by weights_only loading
    torch.save({'state_dict': {'w': torch.ones(2)}, 'message_hub': hub.state_dict()}, path)
    with pytest.raises(UnsafeCheckpointError, match='HistoryBuffer'):
        safe_torch_load(path)


def test_unsafe_global_is_refused_with_clear_message(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'x': fractions.Fraction(1, 3)}}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        safe_torch_load(path)
    msg = str(err.value)
    assert str(path) in msg and 'fractions.Fraction' in msg and '--trust-checkpoint' in msg
    # mmengine's own entry points go through the same loader (resume, load_from, init_cfg)
    model = torch.nn.Linear(1, 1)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(model, str(path))
    # the opt-in is scoped to that one file and that block
    with trusted_checkpoint(path):
        assert safe_torch_load(path)['meta']['x'] == fractions.Fraction(1, 3)
    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(path)
    other = tmp_path / 'other.pth'
    torch.save({'meta': {'x': fractions.Fraction(2, 3)}}, other)
    trust_checkpoint(path)
    assert safe_torch_load(path)['meta']['x'] == fractions.Fraction(1, 3)
    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(other)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        safe_torch_load(tmp_path / 'nope.pth')


def test_not_a_checkpoint_is_named(tmp_path):
    path = tmp_path / 'notes.pth'
    path.write_text('these are not weights\n')
    with pytest.raises(ValueError, match='notes.pth is not a torch checkpoint') as info:
        safe_torch_load(path)
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_truncated_checkpoint_is_named(tmp_path):
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.ones(64, 64)}}, good)
    bad = tmp_path / 'cut.pth'
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match='cut.pth is not a torch checkpoint or is truncated'):
        safe_torch_load(bad)


class _RunsShell:
    def __reduce__(self):
        return (os.system, ('echo pwned', ))


def test_unsafe_error_names_every_blocked_global(tmp_path):
    path = tmp_path / 'shell.pth'
    torch.save({'state_dict': {}, 'a': _RunsShell(), 'b': fractions.Fraction(1, 2)}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        safe_torch_load(path)
    assert 'posix.system' in str(err.value) and 'fractions.Fraction' in str(err.value)
    assert sorted(err.value.blocked_globals) == ['fractions.Fraction', 'posix.system']


def _ckpt(path, step):
    torch.save({'meta': {'iter': step}, 'state_dict': {'w': torch.full((256, ), float(step))}},
               path)
    return str(path)


def test_checkpoint_problem_names_empty_truncated_and_corrupt_files(tmp_path):
    good = _ckpt(tmp_path / 'good.pth', 1)
    assert checkpoint_problem(good) is None
    (tmp_path / 'empty.pth').write_bytes(b'')
    assert checkpoint_problem(tmp_path / 'empty.pth') == 'empty (0 bytes)'
    data = (tmp_path / 'good.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    assert 'unreadable' in checkpoint_problem(tmp_path / 'cut.pth')
    flipped = bytearray(data)
    pos = data.index(b'\x00\x00\x80?')  # inside the tensor bytes (1.0 as float32)
    flipped[pos + 3] = 0x40
    (tmp_path / 'flip.pth').write_bytes(bytes(flipped))
    assert 'CRC' in checkpoint_problem(tmp_path / 'flip.pth')
    assert checkpoint_problem(tmp_path / 'nope.pth') == 'missing'


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    _ckpt(tmp_path / 'iter_2.pth', 2)
    _ckpt(tmp_path / 'iter_4.pth', 4)
    data = (tmp_path / 'iter_4.pth').read_bytes()
    _ckpt(tmp_path / 'iter_6.pth', 6)
    (tmp_path / 'iter_6.pth').write_bytes(data[:300])  # a kill mid-write of the old, in-place kind
    (tmp_path / '.iter_8.pth.tmp-123').write_bytes(data[:100])  # an interrupted atomic write
    (tmp_path / 'last_checkpoint').write_text('')
    path, skipped = find_resumable_checkpoint(str(tmp_path))
    assert path == str(tmp_path / 'iter_4.pth')
    assert [(os.path.basename(p), why.split(' ')[0]) for p, why in skipped] == [
        ('last_checkpoint', 'empty'), ('iter_6.pth', 'unreadable')]

    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    assert find_resumable_checkpoint(str(tmp_path))[0] == str(tmp_path / 'iter_4.pth')
    for name in ('iter_2.pth', 'iter_4.pth'):
        (tmp_path / name).write_bytes(b'')
    path, skipped = find_resumable_checkpoint(str(tmp_path))
    assert path is None and len(skipped) == 3
    fresh = tmp_path / 'fresh'
    fresh.mkdir()
    assert find_resumable_checkpoint(str(fresh)) == (None, [])  # nothing to resume: a new run
