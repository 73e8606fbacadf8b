"""Distillation losses: the references are a teacher's similarities.

Every loss here is ``compute(S_student, S_teacher)`` over two (B, R) score matrices of the
same samples: ``forward(student (B, Ds), teacher (B, Dt))`` builds them with the loss's
similarity kind (the two embedding sizes may differ). Relational KD needs the Gram matrix
of the batch ("dot" similarity): distances and angles are functions of it.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from metricvision.losses.base import LOSSES, LossOutput
from metricvision.similarity import SIMILARITIES, similarity


class DistillationLoss(nn.Module):
    """Base class: ``compute(S_student, S_teacher)`` over (B, R) scores.

    Args:
        similarity_kind: how ``forward`` builds the scores from embeddings.

    Attributes:
        requires_teacher: the Trainer must pass teacher embeddings of the same batch.
    """

    requires_teacher: bool = True

    def __init__(self, similarity_kind: str = "cosine") -> None:
        super().__init__()
        if similarity_kind not in SIMILARITIES:
            raise ValueError(f"similarity_kind must be one of {SIMILARITIES}, got '{similarity_kind}'")
        self.similarity_kind = similarity_kind

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        student_refs: Optional[torch.Tensor] = None,
        teacher_refs: Optional[torch.Tensor] = None,
    ) -> LossOutput:
        """Loss of (B, Ds) student against (B, Dt) teacher embeddings of the same samples.

        Without references each batch is its own reference set.
        """
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(f"student ({student.shape[0]}) and teacher ({teacher.shape[0]}) batches differ in size")
        S_s = similarity(student, student if student_refs is None else student_refs, self.similarity_kind)
        with torch.no_grad():
            S_t = similarity(teacher, teacher if teacher_refs is None else teacher_refs, self.similarity_kind)
        return self.compute(S_s, S_t.detach().to(S_s.dtype))

    def compute(self, S_student: torch.Tensor, S_teacher: torch.Tensor) -> LossOutput:
        """Loss from (B, R) student and teacher scores."""
        raise NotImplementedError

    def own_lr_parameters(self) -> list:
        """Distillation losses hold no parameters."""
        return []


def _off_diagonal(S: torch.Tensor) -> torch.Tensor:
    """(B, B) -> (B, B - 1) without the diagonal; other shapes unchanged."""
    if S.shape[0] != S.shape[1]:
        return S
    n = S.shape[0]
    return S.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)


@LOSSES.register("kd")
class KDLoss(DistillationLoss):
    """Knowledge distillation (Hinton et al., 2015) over rows of scores.

    T^2 KL(softmax(S_t / T) || softmax(S_s / T)), averaged over rows. With class logits as
    scores this is the classic KD; with batch similarities (square scores, self excluded)
    the student matches the teacher's distribution over neighbours.

    Args:
        temperature: T > 0.
        scale: scores are multiplied by ``scale`` before the temperature (cosine scores
            live in [-1, 1]).
    """

    def __init__(self, temperature: float = 4.0, scale: float = 16.0, similarity_kind: str = "cosine") -> None:
        super().__init__(similarity_kind)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.scale = temperature, scale

    def compute(self, S_student: torch.Tensor, S_teacher: torch.Tensor) -> LossOutput:
        t = self.scale / self.temperature
        log_p_s = F.log_softmax(_off_diagonal(S_student) * t, dim=1)
        log_p_t = F.log_softmax(_off_diagonal(S_teacher) * t, dim=1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()
        return LossOutput(kl * self.temperature**2, {"kl": float(kl.detach())})


def _distances(G: torch.Tensor) -> torch.Tensor:
    """(B, B) Euclidean distances from a (B, B) Gram matrix."""
    d = G.diagonal()
    return (d[:, None] + d[None, :] - 2 * G).clamp_min(1e-12).sqrt() * (1 - torch.eye(G.shape[0], dtype=G.dtype, device=G.device))


@LOSSES.register("rkd_distance")
class RKDDistanceLoss(DistillationLoss):
    """Relational KD, distance-wise (Park et al., CVPR 2019).

    Huber loss between pairwise distances of student and teacher, each divided by its mean
    distance over the batch. Scores must be Gram matrices (``similarity_kind="dot"``).
    """

    def __init__(self, similarity_kind: str = "dot") -> None:
        super().__init__(similarity_kind)
        if similarity_kind != "dot":
            raise ValueError(f"rkd_distance needs Gram matrices, similarity_kind must be 'dot', got '{similarity_kind}'")

    def compute(self, S_student: torch.Tensor, S_teacher: torch.Tensor) -> LossOutput:
        if S_student.shape[0] < 2:
            return LossOutput(S_student.sum() * 0.0)
        off = ~torch.eye(S_student.shape[0], dtype=torch.bool, device=S_student.device)
        ds, dt = _distances(S_student), _distances(S_teacher)
        ds = ds / ds[off].mean().clamp_min(1e-12)
        dt = dt / dt[off].mean().clamp_min(1e-12)
        return LossOutput(F.smooth_l1_loss(ds[off], dt[off]))


def _angles(G: torch.Tensor) -> torch.Tensor:
    """(B, B, B) cosines of the angle at j between i and k, from a (B, B) Gram matrix.

    <e_i - e_j, e_k - e_j> = G_ik - G_ij - G_jk + G_jj.
    """
    d = G.diagonal()
    inner = G[:, None, :] - G[:, :, None] - G[None, :, :] + d[None, :, None]  # [i, j, k]
    sq = (d[:, None] + d[None, :] - 2 * G).clamp_min(1e-12)  # |e_i - e_j|^2 at [i, j]
    return inner / (sq[:, :, None] * sq.T[None, :, :]).sqrt()


@LOSSES.register("rkd_angle")
class RKDAngleLoss(DistillationLoss):
    """Relational KD, angle-wise (Park et al., CVPR 2019): Huber loss between the cosines of
    the angles formed by every triplet of the batch. Scores must be Gram matrices."""

    def __init__(self, similarity_kind: str = "dot") -> None:
        super().__init__(similarity_kind)
        if similarity_kind != "dot":
            raise ValueError(f"rkd_angle needs Gram matrices, similarity_kind must be 'dot', got '{similarity_kind}'")

    def compute(self, S_student: torch.Tensor, S_teacher: torch.Tensor) -> LossOutput:
        n = S_student.shape[0]
        if n < 3:
            return LossOutput(S_student.sum() * 0.0)
        eye = torch.eye(n, dtype=torch.bool, device=S_student.device)
        valid = ~(eye[:, :, None] | eye[None, :, :] | eye[:, None, :])  # i != j, j != k, i != k
        return LossOutput(F.smooth_l1_loss(_angles(S_student)[valid], _angles(S_teacher)[valid]))


@LOSSES.register("rank_distillation")
class RankDistillationLoss(DistillationLoss):
    """Listwise rank distillation (DarkRank, Chen et al., AAAI 2018).

    The teacher's top-k ordering pi of each row is the target. Its Plackett-Luce negative
    log-likelihood under scores s is NLL(s) = sum_{m<=k} [log sum_{l ranked >= m} exp(beta s_l)
    - beta s_{pi_m}], where the items outside the list rank after it. The loss is
    max(0, NLL(student) - NLL(teacher)) / k per row: the student must rank like its teacher
    at least as confidently as the teacher does; it is exactly zero when they are equal.

    Args:
        k: length of the teacher's list per row (clipped to R, self excluded).
        beta: scale applied to scores before the softmax.
    """

    def __init__(self, k: int = 8, beta: float = 16.0, similarity_kind: str = "cosine") -> None:
        super().__init__(similarity_kind)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.k, self.beta = k, beta

    def _nll(self, S: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """(B,) Plackett-Luce NLL of the (B, k) orders under (B, R) scores."""
        s = self.beta * S
        listed = s.gather(1, order)
        rest = s.scatter(1, order, float("-inf")).logsumexp(1, keepdim=True)
        tail = torch.logaddexp(torch.logcumsumexp(listed.flip(1), dim=1).flip(1), rest)
        return (tail - listed).sum(1)

    def compute(self, S_student: torch.Tensor, S_teacher: torch.Tensor) -> LossOutput:
        Ss, St = _off_diagonal(S_student), _off_diagonal(S_teacher)
        k = min(self.k, St.shape[1])
        if k < 1 or St.shape[0] == 0:
            return LossOutput(S_student.sum() * 0.0)
        order = St.topk(k, dim=1).indices
        gap = (self._nll(Ss, order) - self._nll(St, order)).clamp_min(0.0)
        return LossOutput(gap.mean() / k, {"rank_gap": float(gap.detach().mean())})


@LOSSES.register("embedding_distillation")
class EmbeddingDistillationLoss(DistillationLoss):
    """Embedding distillation: mean over the batch of ||student - teacher||^2 of the same samples'
    embeddings, which must have the same size (a network distilling its previous self); no scores."""

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        student_refs: Optional[torch.Tensor] = None,
        teacher_refs: Optional[torch.Tensor] = None,
    ) -> LossOutput:
        """Loss of (B, D) student against (B, D) teacher embeddings (references are not used)."""
        if student.shape != teacher.shape:
            raise ValueError(f"embedding distillation needs embeddings of one shape, got student {tuple(student.shape)} "
                             f"and teacher {tuple(teacher.shape)}")
        return LossOutput(((student - teacher.detach().to(student.dtype)) ** 2).sum(1).mean())
