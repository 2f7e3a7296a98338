# SCFS (https://arxiv.org/abs/2212.06486, ICCV 2023) on a ViT-S/16 (DINO layout, CoTAPViT). The paper
# and the official code report ResNet-50 only; the ViT mapping is our choice:
# - searched stages = the token maps after blocks 4, 8 and 12 (out_indices (3, 7, 11): 1/3, 2/3 and
#   the end of the depth, the ViT analogue of ResNet layer2/3/4), out_type='featmap'; the last one
#   after the final LayerNorm. All stages have C = 384.
# - the DINO loss uses the CLS token of the last block (dino_feature='cls'), as DINO ViTs do.
# Everything else as configs/_base_/models/scfs_r50.py.
_base_ = ['./scfs_r50.py']

embed_dims = 384
model = dict(
    backbone=dict(_delete_=True, type='CoTAPViT', arch='dino-s', img_size=224, patch_size=16,
                  drop_path_rate=0.1, out_indices=(3, 7, 11), out_type='featmap', final_norm=True),
    stage_channels=(embed_dims, embed_dims, embed_dims),
    dino_feature='cls',
    head=dict(in_channels=embed_dims),
)
