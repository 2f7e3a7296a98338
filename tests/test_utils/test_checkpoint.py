import fractions
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner import load_checkpoint

from cotap_mm.utils.checkpoint import (UnsafeCheckpointError, from_plain, safe_torch_load,
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
