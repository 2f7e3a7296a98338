"""The converter tools run the package's conversion code (no copy of it under tools/)."""
from cotap_mm import converters
from cotap_mm.utils.checkpoint import load_checkpoint_file
from cotap_test_helpers.tool_runs import load_tool


def test_tools_use_the_package_code():
    vit2cotap = load_tool('tools/model_converters/vit2cotap.py')
    for name in ('convert_checkpoint', 'convert_release_checkpoint', 'load_source',
                 'load_with_placeholders'):
        assert getattr(vit2cotap, name) is getattr(converters, name)
    cotap2timm = load_tool('tools/model_converters/cotap2timm.py')
    assert cotap2timm.convert_checkpoint is converters.convert_checkpoint
    assert cotap2timm.load_checkpoint is load_checkpoint_file


def test_load_checkpoint_file_refuses_pickled_objects_unless_trusted(tmp_path):
    import argparse

    import pytest
    import torch

    from cotap_mm.utils.checkpoint import UnsafeCheckpointError
    path = tmp_path / 'obj.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'obj': argparse.Namespace(a=1)}, path)
    with pytest.raises(UnsafeCheckpointError, match='--trust-checkpoint'):
        load_checkpoint_file(path)
    assert load_checkpoint_file(path, trust=True)['obj'].a == 1
