# Generated scenes for the CPU-sized runs (cotap_mm SyntheticScenes, no download): 512 train images of
# 96 px with objects of 8 classes; batch 8 in one process, no worker processes, endless sampler.
# Configs add the views: train_dataloader = dict(dataset=dict(pipeline=train_pipeline)).
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    drop_last=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='SyntheticScenes', num_samples=512, split='train', seed=0, image_size=96,
                 num_classes=8))
