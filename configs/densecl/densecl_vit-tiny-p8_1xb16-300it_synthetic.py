# DenseCL (https://arxiv.org/abs/2011.09157), mmpretrain's algorithm unchanged, on the tiny ViT: the
# dense baseline of tools/benchmarks/bench_dense_methods.py. The ViT returns its patch tokens as a
# feature map (out_type='featmap'), which is what DenseCLNeck pools and projects.
_base_ = ['../mocov3/mocov3_vit-tiny-p8_1xb16-300it_synthetic.py']

embed_dims = 96
model = dict(
    _delete_=True,
    type='DenseCL',
    queue_len=4096,
    feat_dim=64,
    momentum=0.01,
    loss_lambda=0.5,
    data_preprocessor={{_base_.data_preprocessor}},
    backbone=dict(
        type='VisionTransformer',
        arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=3,
                  feedforward_channels=4 * embed_dims),
        img_size=64, patch_size=8, out_type='featmap', final_norm=True),
    neck=dict(type='DenseCLNeck', in_channels=embed_dims, hid_channels=256, out_channels=64,
              num_grid=None),
    head=dict(type='ContrastiveHead', loss=dict(type='CrossEntropyLoss'), temperature=0.2),
)
