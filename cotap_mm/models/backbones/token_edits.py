"""Edits of embedded ViT tokens: foreign-token substitution (de-coupling) and iBOT masking.

Pure functions on ``[R, e + N, C]`` token tensors (``e`` leading non-patch tokens); they check
shapes only, never values, so they cost no host synchronisation in a training step.
:meth:`CoTAPViT.forward_tokens` applies them between the embedding and the first block.
"""
from typing import Sequence

import torch
import torch.nn as nn
from mmpretrain.models.utils import resize_pos_embed

__all__ = ['foreign_index', 'substitute_tokens', 'apply_mask_token']


def foreign_index(source: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Donor image of each source row: the batch in reverse order (the official ``x.flip(0)``).

    ``donor = B - 1 - s``; the middle row of an odd batch (``donor == s``) takes ``(s + 1) % B``.

    Args:
        source (LongTensor): [E] rows in ``[0, B)``.
        batch_size (int): B >= 2.

    Returns:
        LongTensor: [E], never equal to ``source``.
    """
    if batch_size < 2:
        raise ValueError(f'a foreign image needs a batch of at least 2 images, got {batch_size}')
    source = source.long()
    donor = batch_size - 1 - source
    return torch.where(donor == source, (source + 1) % batch_size, donor)


def substitute_tokens(tokens: torch.Tensor,
                      replace: torch.Tensor,
                      donor_index: torch.Tensor,
                      num_extra_tokens: int = 1) -> torch.Tensor:
    """Replace patch tokens by the (detached) tokens of another row at the same position.

    ``out[r, e + n] = tokens[donor_index[r], e + n].detach()`` where ``replace[r, n]``, else
    ``tokens[r, e + n]`` (``e = num_extra_tokens``; the CLS token is never replaced).

    Args:
        tokens (Tensor): [R, e + N, C].
        replace (BoolTensor): [R, N], True = take the donor's token.
        donor_index (LongTensor): [R] donor row (in ``[0, R)``) of every row.
        num_extra_tokens (int): leading non-patch tokens. Defaults to 1.

    Returns:
        Tensor: [R, e + N, C].
    """
    if tokens.dim() != 3:
        raise ValueError(f'tokens must be [R, e + N, C], got shape {tuple(tokens.shape)}')
    R, L, C = tokens.shape
    N = L - num_extra_tokens
    if tuple(replace.shape) != (R, N) or replace.dtype != torch.bool:
        raise ValueError(f'replace must be a bool tensor [R, N] = [{R}, {N}], got '
                         f'{replace.dtype} {tuple(replace.shape)}')
    if tuple(donor_index.shape) != (R, ):
        raise ValueError(f'donor_index must be [R] = [{R}], got {tuple(donor_index.shape)}')
    patches = tokens[:, num_extra_tokens:]
    donor = patches.detach()[donor_index.long().to(tokens.device)]
    patches = torch.where(replace.to(tokens.device)[..., None], donor, patches)
    return torch.cat([tokens[:, :num_extra_tokens], patches], dim=1)


def apply_mask_token(backbone: nn.Module, tokens: torch.Tensor, mask: torch.Tensor,
                     mask_token: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """iBOT masking on embedded tokens: masked positions become ``pre_norm(mask_token + pos[p])``.

    Args:
        backbone (nn.Module): an mmpretrain ``VisionTransformer`` (``pos_embed``,
            ``patch_resolution``, ``interpolate_mode``, ``num_extra_tokens``, ``pre_norm``).
        tokens (Tensor): [R, e + N, C] from ``backbone.embed``.
        mask (BoolTensor): [R, N], True = masked.
        mask_token (Tensor): [C] or [1, C] (or [1, 1, C]) learnable token.
        hw (Sequence[int]): the patch grid (h, w), h * w = N.

    Returns:
        Tensor: [R, e + N, C].
    """
    e = backbone.num_extra_tokens
    R, L, C = tokens.shape
    N = L - e
    if int(hw[0]) * int(hw[1]) != N:
        raise ValueError(f'hw={tuple(hw)} does not match the {N} patch tokens')
    if tuple(mask.shape) != (R, N) or mask.dtype != torch.bool:
        raise ValueError(f'mask must be a bool tensor [R, N] = [{R}, {N}], got {mask.dtype} '
                         f'{tuple(mask.shape)}')
    if mask_token.numel() != C:
        raise ValueError(f'mask_token must hold C={C} values, got shape {tuple(mask_token.shape)}')
    pos = resize_pos_embed(backbone.pos_embed, backbone.patch_resolution, tuple(hw),
                           mode=backbone.interpolate_mode, num_extra_tokens=e)[:, e:]
    masked = backbone.pre_norm(mask_token.reshape(1, 1, C).to(pos.dtype) + pos)  # [1, N, C]
    patches = torch.where(mask.to(tokens.device)[..., None], masked.to(tokens.dtype),
                          tokens[:, e:])
    return torch.cat([tokens[:, :e], patches], dim=1)
