"""The training objectives on the answer tokens: the LM loss and distillation from the uncompressed model.

The compressed (student) and uncompressed (teacher) sequences differ in their image placeholders, never in the
answer: the answer tokens are found in each by their labels, and the two are compared position for position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DataError
from .collator import IGNORE_INDEX

__all__ = ["answer_logits", "distillation_loss", "lm_loss"]


def answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logits that predict the labelled tokens, row after row: `(answer tokens, vocab)`.

    The logit at position `t - 1` predicts the token at `t`.
    """
    targets = labels[:, 1:] != IGNORE_INDEX
    return logits[:, :-1][targets]


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy summed over the labelled tokens, divided by `num_items` (default: their number)."""
    targets = labels[:, 1:]
    total = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                            reduction="sum")
    count = num_items if num_items is not None else (targets != IGNORE_INDEX).sum()
    return total / count


def distillation_loss(student_logits: torch.Tensor, student_labels: torch.Tensor, teacher_logits: torch.Tensor,
                      teacher_labels: torch.Tensor, *, temperature: float = 1.0,
                      num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions at the answer positions, summed and divided by
    `num_items` (default: the number of answer tokens), times `temperature ** 2` (Hinton et al.'s scaling, so the
    gradient size does not depend on the temperature).

    Raises:
        DataError: the two batches label a different number of answer tokens (they are not the same samples).
    """
    student = answer_logits(student_logits, student_labels).float()
    teacher = answer_logits(teacher_logits, teacher_labels).float()
    if student.shape != teacher.shape:
        raise DataError(f"the student's batch labels {student.shape[0]} answer tokens and the teacher's "
                        f"{teacher.shape[0]}: both must be the same samples (build them with one VTCCollator)")
    student_log_probs = F.log_softmax(student / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="sum")
    count = num_items if num_items is not None else student.shape[0]
    return kl * temperature**2 / count
