import numpy as np
import pytest
import torch

from cotap_mm.models.losses.prototype_entropy_loss import PrototypeEntropyLoss, prototype_entropy


def np_reference(protos, bank, T):
    p = protos.reshape(protos.shape[0], -1).astype(np.float64)
    s = bank.reshape(bank.shape[0], -1).astype(np.float64)
    ents = []
    for m in range(p.shape[0]):
        cos = np.array([p[m] @ s[j] / (np.linalg.norm(p[m]) * np.linalg.norm(s[j])) for j in range(s.shape[0])])
        z = cos / T
        e = np.exp(z - z.max())
        prob = e / e.sum()
        ents.append(-(prob * np.log(prob)).sum())
    return float(np.mean(ents))


@pytest.mark.parametrize('T', [0.1, 0.5])
def test_vs_numpy(T):
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)
    bank = torch.randn(12, 4, 3, 3, generator=g, dtype=torch.float64)
    out = prototype_entropy(protos, bank, T)
    assert out.dim() == 0
    assert out.item() == pytest.approx(np_reference(protos.numpy(), bank.numpy(), T), rel=1e-10)
    # flat [M, D] layout gives the same
    assert prototype_entropy(protos.reshape(5, -1), bank.reshape(12, -1), T).item() == pytest.approx(out.item())
    loss = PrototypeEntropyLoss(temperature=T, loss_weight=2.0)
    assert loss(protos, bank).item() == pytest.approx(2 * out.item())


def test_grad_only_to_prototypes():
    protos = torch.randn(4, 8, requires_grad=True)
    bank = torch.randn(10, 8, requires_grad=True)
    prototype_entropy(protos, bank).backward()
    assert protos.grad is not None and protos.grad.abs().sum() > 0
    assert bank.grad is None


def test_sgd_reduces_entropy_and_moves_to_bank():
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(32, 2, 3, 3, generator=g).reshape(32, -1), dim=1)
    protos = torch.randn(6, 18, generator=g)
    protos.requires_grad_(True)

    def nearest_cos(p):
        return (torch.nn.functional.normalize(p.detach(), dim=1) @ bank.t()).max(dim=1).values

    before_loss = prototype_entropy(protos, bank).item()
    before_cos = nearest_cos(protos)
    opt = torch.optim.SGD([protos], lr=1.0)
    for _ in range(50):
        opt.zero_grad()
        loss = prototype_entropy(protos, bank)
        loss.backward()
        opt.step()
    assert prototype_entropy(protos, bank).item() < before_loss - 0.1
    after_cos = nearest_cos(protos)
    assert after_cos.mean() > before_cos.mean() + 0.05
    assert (after_cos >= before_cos - 1e-3).all()


def test_bounds_and_errors():
    bank = torch.randn(7, 5)
    # identical prototype = a bank sample with tiny T -> near-zero entropy; all-equal cosines -> log S
    assert prototype_entropy(bank[:1], bank, temperature=1e-3).item() < 1e-3
    same = torch.ones(7, 5)
    assert prototype_entropy(torch.ones(2, 5), same).item() == pytest.approx(np.log(7), rel=1e-6)
    with pytest.raises(ValueError, match='temperature'):
        prototype_entropy(bank, bank, temperature=0)
    with pytest.raises(ValueError, match='entries each'):
        prototype_entropy(torch.randn(2, 4), bank)
    with pytest.raises(ValueError, match='prototypes must be'):
        prototype_entropy(torch.randn(4), bank)
    with pytest.raises(ValueError, match='temperature'):
        PrototypeEntropyLoss(temperature=-1)


def test_registry():
    from mmpretrain.registry import MODELS
    assert isinstance(MODELS.build(dict(type='PrototypeEntropyLoss')), PrototypeEntropyLoss)
