# Runtime defaults shared by every cotap_mm config.
default_scope = 'mmpretrain'
custom_imports = dict(imports=['cotap_mm'], allow_failed_imports=False)

default_hooks = dict(
    runtime_info=dict(type='RuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # CheckpointHook + atomic writes (temp file, fsync, rename), the RNG states, no NaN model saved
    checkpoint=dict(type='AtomicCheckpointHook', interval=1000, by_epoch=False, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # checkpoints that load with torch.load(weights_only=True): see cotap_mm/utils/checkpoint.py
    plain_checkpoint=dict(type='PlainCheckpointHook'),
    # --resume: newest intact checkpoint, RNG states restored (bitwise continuation)
    resume=dict(type='ResumeHook'),
    # load_from / resume: backbone keys missing or mis-shaped are an error (strict=False: logged)
    start_weights=dict(type='StartWeightsHook', strict=True),
    # NaN / inf loss or gradient norm: step not applied, run stopped (max_skipped_steps=N: N skipped)
    divergence=dict(type='DivergenceHook', max_skipped_steps=0),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches to gloo (and no device_ids) on a machine without CUDA
    dist_cfg=dict(backend='nccl'),
)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
log_processor = dict(window_size=10, by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)

# The transforms of one image for feature extraction: mmpretrain's FeatureExtractor(config, ckpt)
# (after `import cotap_mm`, which lets it read test_pipeline: a pretraining config has no
# test_dataloader) and tools/analysis_tools/visualize_features.py. Resized (squashed) to the side the
# released runs train at, as the released probes resize; configs of other sizes override it.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(224, 224)),
    dict(type='PackInputs'),
]
