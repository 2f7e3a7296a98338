# DenseMonitorHook of the released CoTAP runs: every 10k iterations, dense NN retrieval (Hummingbird,
# k 30, T 0.02, nothing trained) of the 2C filtered features on the COCO-Stuff-27 subset the release
# monitors (STEGO's curated lists: memory from the first 1,000 images of the curated train list,
# queries from the first 500 of the curated val list, squashed to 224 px), logged as dense/mIoU; the
# best 5 checkpoints are kept (best_dense_mIoU_iter_*.pth in the work dir).
# The release keeps its best 5 by a quick COCO-Stuff-27 *linear* probe instead (336 px, 9,600
# training samples); NN retrieval ranks by the same labels without training a probe.
# Data: data/coco_stuff164k in mmseg's layout (images/{train,val}2017, annotations/{train,val}2017/
# *_labelTrainIds.png from mmseg's tools/dataset_converters/coco_stuff164k.py) plus STEGO's
# curated/{train,val}2017/Coco164kFull_Stuff_Coarse{,_7}.txt. Elsewhere: change coco_stuff_root
# below, or --cfg-options custom_hooks.1.train_dataset.data_root=DIR
# custom_hooks.1.val_dataset.data_root=DIR (the hook's index in custom_hooks is in the error message
# a missing folder gives before training).
coco_stuff_root = 'data/coco_stuff164k'
coco_stuff_monitor_train = dict(
    type='COCOStuff27Dataset',
    data_root=coco_stuff_root,
    data_prefix=dict(img_path='images/train2017', seg_map_path='annotations/train2017'),
    ann_file='curated/train2017/Coco164kFull_Stuff_Coarse.txt')
coco_stuff_monitor_val = dict(
    type='COCOStuff27Dataset',
    data_root=coco_stuff_root,
    data_prefix=dict(img_path='images/val2017', seg_map_path='annotations/val2017'),
    ann_file='curated/val2017/Coco164kFull_Stuff_Coarse_7.txt')
dense_monitor = dict(
    type='DenseMonitorHook',
    interval=10000,
    image_size=224,
    features='2C',
    train_dataset=coco_stuff_monitor_train,
    val_dataset=coco_stuff_monitor_val,
    max_train=1000,
    max_val=500,
    memory_size=102400,
    k=30,
    temperature=0.02,
    keep_best=5)
