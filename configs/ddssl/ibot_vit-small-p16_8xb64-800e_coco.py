# The iBOT baseline of the de-coupling paper: the same run as
# ddssl-ibot_vit-small-p16_8xb64-800e_coco.py (RCC masks as iBOT MIM masks) without the de-coupling
# branch. Reported: COCO det 42.3 AP^bb, ADE20K 39.9.
_base_ = ['./ddssl-ibot_vit-small-p16_8xb64-800e_coco.py']

model = dict(decoupling=None)
