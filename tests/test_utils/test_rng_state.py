"""Every global generator a step uses round-trips through a weights_only checkpoint."""
import io
import random

import numpy as np
import torch

from cotap_mm.utils.rng_state import capture_rng_state, restore_rng_state


def _draw():
    return (random.random(), float(np.random.rand()), float(np.random.randn()),
            torch.rand(3).tolist(), torch.randperm(10).tolist())


def test_restored_state_draws_the_same_numbers():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    buf = io.BytesIO()
    torch.save({'rng': capture_rng_state()}, buf)
    expected = _draw()
    _draw()  # move every generator on

    buf.seek(0)
    restore_rng_state(torch.load(buf, weights_only=True)['rng'])  # plain data only
    assert _draw() == expected


def test_missing_generator_is_named():
    state = capture_rng_state()
    del state['numpy']
    try:
        restore_rng_state(state)
    except KeyError as e:
        assert 'numpy' in str(e)
    else:
        raise AssertionError('a state without numpy must be refused')
