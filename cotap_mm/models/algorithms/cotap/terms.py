"""The terms of CoTAP's objective, in the order the step runs them (the order of the log keys)."""
from typing import List

import torch.nn as nn

from .step import CoTAPTerm
from .term_cls import ClsTerms
from .term_ddssl import DDSSLTerms
from .term_patch_cluster import PatchClusterTerm
from .term_prototypes import PrototypeTerm
from .term_ranking import RankingTerm

__all__ = ['TERMS', 'build_terms']

#: ``loss_cotap``; ``loss_patch_cluster`` (its codes feed the de-coupling terms, so it runs before
#: them); ``loss_dc`` / ``loss_depos``; the CLS terms; ``loss_proto_entropy`` (its bank takes the
#: step's tokens last).
TERMS = (RankingTerm, PatchClusterTerm, DDSSLTerms, ClsTerms, PrototypeTerm)


def build_terms(model: nn.Module) -> List[CoTAPTerm]:
    """One instance of every term (each checks per step whether the model enables it)."""
    return [term() for term in TERMS]
