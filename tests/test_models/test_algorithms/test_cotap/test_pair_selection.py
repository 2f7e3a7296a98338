import pytest
import torch
import torch.nn.functional as F

from cotap_mm.models.algorithms.cotap.pair_selection import (
    build_similarity_items, gather_tokens, negative_partners, pool_views, random_derangements,
    retrieve_partners, topk_foreground_indices)


def test_retrieve_partners_brute_force_and_excludes_self():
    torch.manual_seed(0)
    e = torch.randn(7, 5)
    got = retrieve_partners(e)
    for u in range(7):
        best, best_v = -2.0, None
        for v in range(7):
            if v == u:
                continue
            c = F.cosine_similarity(e[u], e[v], dim=0).item()
            if c > best:
                best, best_v = c, v
        assert got[u].item() == best_v
    # duplicates: the most similar other image is the duplicate, never itself
    e2 = torch.cat([e[:3], e[:3]])
    got2 = retrieve_partners(e2)
    assert got2.tolist() == [3, 4, 5, 0, 1, 2]
    with pytest.raises(ValueError, match='at least 2'):
        retrieve_partners(torch.randn(1, 4))


def test_random_derangements():
    g = torch.Generator().manual_seed(0)
    for B in (2, 3, 8):
        p = random_derangements(B, 20, generator=g)
        assert p.shape == (20, B)
        for row in p:
            assert sorted(row.tolist()) == list(range(B))
            assert all(row[i].item() != i for i in range(B))
    with pytest.raises(ValueError, match='batch_size'):
        random_derangements(1, 3)


def test_negative_partners_never_anchor():
    partner = torch.tensor([1, 0, 3, 2])  # mutual pairs: partner[partner[u]] == u
    perms = torch.tensor([[1, 0, 3, 2], [2, 3, 0, 1]])
    neg = negative_partners(partner, perms)
    expected = [[1, 0, 3, 2], [3, 2, 1, 0]]  # row 0: partner[perm]==u -> perm itself
    assert neg.tolist() == expected
    assert not (neg == torch.arange(4)).any()


def test_pool_views_and_topk_brute_force():
    torch.manual_seed(0)
    B, G, D, h = 2, 2, 3, 4
    maps = torch.randn(B, G, D, h, h)
    pooled = pool_views(maps, 2)
    assert pooled.shape == (B, G * 4, D)
    for b in range(B):
        for g in range(G):
            for i in range(2):
                for j in range(2):
                    ref = maps[b, g, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(1, 2))
                    torch.testing.assert_close(pooled[b, g * 4 + i * 2 + j], ref)
    torch.testing.assert_close(pool_views(maps, 4)[:, :16], maps[:, 0].flatten(2).transpose(1, 2))

    mask = torch.rand(3, 10)
    mask[0, 4] = mask[0, 7] = 2.0  # tie -> lower index first
    idx = topk_foreground_indices(mask, 3)
    for b in range(3):
        order = sorted(range(10), key=lambda i: (-mask[b, i].item(), i))
        assert idx[b].tolist() == order[:3]
    with pytest.raises(ValueError, match='k must be'):
        topk_foreground_indices(mask, 11)
    tok = torch.randn(3, 10, 4)
    got = gather_tokens(tok, idx)
    for b in range(3):
        torch.testing.assert_close(got[b], tok[b, idx[b]])


def test_build_similarity_items_brute_force():
    torch.manual_seed(0)
    B, k, D, R = 4, 3, 6, 2
    tok = torch.randn(B, k, D)
    partner = torch.tensor([2, 3, 0, 1])
    neg = torch.tensor([[1, 2, 3, 0], [3, 0, 1, 2]])
    sim, is_random = build_similarity_items(tok, partner, neg)
    assert sim.shape == is_random.shape == (B * k * k * (1 + R), )
    ref, ref_r = [], []
    for u in range(B):
        for r, tgt in enumerate([partner[u]] + [neg[q, u] for q in range(R)]):
            for i in range(k):
                for j in range(k):
                    ref.append(F.cosine_similarity(tok[u, i], tok[tgt, j], dim=0))
                    ref_r.append(r > 0)
    torch.testing.assert_close(sim, torch.stack(ref), rtol=1e-5, atol=1e-6)
    assert is_random.tolist() == ref_r
    # 150 items per image for the official k = 5, R = 5
    sim5, _ = build_similarity_items(torch.randn(3, 5, 4), torch.tensor([1, 2, 0]),
                                     random_derangements(3, 5))
    assert sim5.numel() == 3 * 150
