"""The (target view, student view) pairs of different crops of multi-crop self-distillation.

DINO (`arXiv 2104.14294 <https://arxiv.org/abs/2104.14294>`_) and the SwAV-style clustering terms
of CoTAP (`arXiv 2509.09429 <https://arxiv.org/abs/2509.09429>`_) compare every student crop with
every target crop (teacher logits or codes) except the same crop.
"""
from typing import List, Optional, Sequence, Tuple

__all__ = ['different_crop_pairs']


def different_crop_pairs(num_student: int, num_target: int,
                         student_view_ids: Optional[Sequence[int]] = None,
                         target_view_ids: Optional[Sequence[int]] = None,
                         target: str = 'teacher') -> List[Tuple[int, int]]:
    """Row pairs ``(ti, si)`` whose crop indices differ, target-major.

    Args:
        num_student (int): Vs, student views.
        num_target (int): Vt, target views.
        student_view_ids (Sequence[int], optional): crop index of each student view; defaults to
            ``range(Vs)``.
        target_view_ids (Sequence[int], optional): crop index of each target view; defaults to
            ``range(Vt)`` (the targets are the first crops, the global ones).
        target (str): name of the targets in the error messages (``'<target>_view_ids'``).
            Defaults to 'teacher'.

    Returns:
        list[tuple[int, int]]: ``(ti, si)`` for ``ti`` in ``range(Vt)`` (outer) and ``si`` in
        ``range(Vs)`` (inner) with ``student_view_ids[si] != target_view_ids[ti]``.

    Raises:
        ValueError: the id lists have the wrong length, or no pair of different crops exists.
    """
    s_ids = list(range(num_student)) if student_view_ids is None else [
        int(i) for i in student_view_ids]
    t_ids = list(range(num_target)) if target_view_ids is None else [
        int(i) for i in target_view_ids]
    if len(s_ids) != num_student or len(t_ids) != num_target:
        raise ValueError(f'student_view_ids / {target}_view_ids must have {num_student} / '
                         f'{num_target} entries, got {len(s_ids)} / {len(t_ids)}')
    pairs = [(ti, si) for ti, t in enumerate(t_ids) for si, s in enumerate(s_ids) if s != t]
    if not pairs:
        raise ValueError(f'no (student, {target}) pair of different crops: student_view_ids='
                         f'{s_ids}, {target}_view_ids={t_ids}')
    return pairs
