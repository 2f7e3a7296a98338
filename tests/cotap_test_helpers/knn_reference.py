"""Brute-force k-NN vote, the independent reference of the NN-retrieval and k-NN tests."""
import numpy as np


def brute_knn_votes(memory: np.ndarray, labels: np.ndarray, queries: np.ndarray, num_classes: int,
                    k: int, temperature: float, normalise: bool = False) -> np.ndarray:
    """DINO's ``eval_knn`` vote in numpy (float64): rows L2-normalised, every similarity sorted
    (stable), the ``k`` best vote with ``exp(sim / T)``, summed per class; ``normalise`` divides
    each row by its sum (= a softmax over the ``k`` neighbours). Returns ``[n, C]``."""
    m = memory.astype(np.float64)
    q = queries.astype(np.float64)
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    out = np.zeros((q.shape[0], num_classes))
    for i in range(q.shape[0]):
        s = m @ q[i]
        for j in np.argsort(-s, kind='stable')[:k]:
            out[i, int(labels[j])] += np.exp(s[j] / temperature)
    return out / out.sum(1, keepdims=True) if normalise else out
