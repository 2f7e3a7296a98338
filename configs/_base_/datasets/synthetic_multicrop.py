# Multi-crop views of the generated scenes (./synthetic_scenes.py) for the CPU-sized SCFS runs:
# GeometricMultiView with 2 global 64 px crops (scale 0.25-1) + 4 local 32 px crops (scale
# 0.05-0.25), flip, no overlap constraint; colour jitter, grayscale and blur on every crop, drawn per
# image in the pipeline (the released CoTAP draws once per view index for the whole batch:
# GeometricMultiView(batch_color=True) + CoTAPDataPreprocessor with PerViewColorAugment, see
# cotap_coco.py); the teacher sees the global crops. Colour augmentation stronger than DINO's (hue 0.5 instead of 0.1,
# grayscale 0.5 instead of 0.2): object colours of generated scenes are random per instance, so
# colour is a nuisance the features should drop (it never tells the class).
_base_ = ['./synthetic_scenes.py']

global_size, local_size = 64, 32
student_pipeline = [
    dict(type='HueSafeColorJitter', brightness=0.4, contrast=0.4, saturation=0.4, hue=0.5, prob=0.8),
    dict(type='RandomGrayscale', prob=0.5, keep_channels=True, channel_weights=(0.114, 0.587, 0.299)),
    dict(type='RandomGaussianBlur', sigma=(0.1, 1.0), kernel_size=3, prob=0.5),
]
train_pipeline = [
    dict(type='GeometricMultiView',
         num_global=2, global_size=global_size, global_scale=(0.25, 1.0),
         num_local=4, local_size=local_size, local_scale=(0.05, 0.25),
         flip_prob=0.5, min_overlap=None,
         student_pipeline=student_pipeline, teacher_views='global'),
    dict(type='PackGeometricViews'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
