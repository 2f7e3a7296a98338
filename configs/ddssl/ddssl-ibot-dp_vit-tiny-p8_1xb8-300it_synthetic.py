# The CPU-sized de-coupling run plus v1's de-positioning module: for 25 % of each view's images a
# random box (no object boxes in unlabelled data) is pasted, rescaled by U[0.5, 1.5], at a new
# position onto another image; the student's box-pooled tokens there are matched to the teacher's of
# the clean region (weight 0.3; the paper gives no recipe, these are our choices).
_base_ = ['./ddssl-ibot_vit-tiny-p8_1xb8-300it_synthetic.py']

model = dict(depositioning=dict(_delete_=True, prob=0.25, loss_weight=0.3, box_area=(0.12, 0.30),
                                box_aspect=(0.5, 2.0), scale=(0.5, 1.5), box_key=None))
