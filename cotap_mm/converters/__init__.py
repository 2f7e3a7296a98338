"""Checkpoint conversion code shared by the tools under ``tools/model_converters/``."""
from .vit_checkpoints import (SRC_FORMATS, TARGETS, convert_checkpoint, convert_release_checkpoint,
                              load_source, load_with_placeholders)

__all__ = ['SRC_FORMATS', 'TARGETS', 'convert_checkpoint', 'convert_release_checkpoint',
           'load_source', 'load_with_placeholders']
