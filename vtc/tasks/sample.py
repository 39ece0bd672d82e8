"""One evaluation or training example: images, a question and its answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

__all__ = ["Sample"]


@dataclass
class Sample:
    """A question about zero or more images, with its reference answer.

    Args:
        images: the images, in the order the prompt refers to them (empty for a text-only sample).
        question: the text that follows the images in the prompt.
        answer: the reference answer, as the model should write it.
        choices: the possible answers of a multiple-choice question, else `None`.
        task: the id of the task the sample belongs to (`vtc.tasks.available()`), or a dataset's name; it selects the
            scorer (`vtc.tasks.score`).
    """

    images: list[Image.Image]
    question: str
    answer: str
    choices: list[str] | None = None
    task: str = "custom"
    meta: dict = field(default_factory=dict, compare=False, repr=False)
