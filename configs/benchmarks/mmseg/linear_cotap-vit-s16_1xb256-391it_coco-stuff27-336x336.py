# COCO-Stuff-27 frozen linear probe of CoTAP ViT-S/16 (the CoTAP README's "Linear Seg" column): the
# 171 mmseg COCO-Stuff train ids merged into the 27 supercategories of IIC/STEGO
# (cotap_mm.datasets.COCOStuff27Dataset: its label_map is applied by LoadAnnotations), on STEGO's
# curated image lists (put IIC/STEGO's Coco164kFull_Stuff_Coarse.txt and
# Coco164kFull_Stuff_Coarse_7.txt under data_root/curated/; set ann_file='' to use every image);
# batch 256, lr 3e-3, 100k samples (391 iterations). Crops, head, evaluation pipeline (released:
# images and labels at 448) and schedule are those of the COCO-Stuff-171 probe it inherits; evaluated
# after every pass over the curated training list (49,629 images as PiCIE / STEGO report: 193
# iterations), best mIoU kept.
_base_ = ['./linear_cotap-vit-s16_1xb256-391it_coco-stuff171-336x336.py']

train_dataloader = dict(
    dataset=dict(
        type='COCOStuff27Dataset', ann_file='curated/train2017/Coco164kFull_Stuff_Coarse.txt'))
val_dataloader = dict(
    dataset=dict(
        type='COCOStuff27Dataset', ann_file='curated/val2017/Coco164kFull_Stuff_Coarse_7.txt'))
test_dataloader = val_dataloader
model = dict(decode_head=dict(num_classes=27))
train_cfg = dict(val_interval=193)  # one pass over the curated training list
