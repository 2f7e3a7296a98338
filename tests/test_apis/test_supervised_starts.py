"""cotap_mm.apis.supervised_starts: presence labels and the image-level supervised start."""
import torch

from cotap_mm.apis import presence_labels, tiny_vit, train_supervised


def test_presence_labels():
    masks = torch.tensor([[[0, 2], [2, 0]], [[1, 3], [0, 0]], [[0, 0], [0, 0]]])
    ref = torch.tensor([[0., 1., 0.], [1., 0., 1.], [0., 0., 0.]])
    assert torch.equal(presence_labels(masks, 4), ref)


def test_image_level_supervision_trains_the_cls_path(one_thread):
    torch.manual_seed(0)
    vit = tiny_vit(32)
    before = [p.detach().clone() for p in vit.parameters()]
    train_supervised(vit, 9, 2, 32, 8, 0, image_level=True)
    changed = [not torch.equal(a, b.detach()) for a, b in zip(before, vit.parameters())]
    assert any(changed) and not vit.training
