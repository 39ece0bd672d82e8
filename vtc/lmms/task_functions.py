"""The functions the shipped lmms-eval task YAMLs name (`!function vtc.lmms.task_functions.NAME`).

A document is a row of a file written by `vtc.lmms.write_tasks`: `images` (a list of images), `question`, `answer`,
`choices` (a list, or none for `grid-readout`) and `task` (the `vtc.tasks` id, which selects the scorer).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from ..tasks import Sample, score

__all__ = ["doc_to_text", "doc_to_visual", "process_results"]


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    """The document's images, in the order the question refers to them."""
    return [image.convert("RGB") for image in doc["images"]]


def doc_to_text(doc: dict[str, Any]) -> str:
    """The question; the model puts the images before it (`vtc.tasks.build_prompt`)."""
    return doc["question"]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """`accuracy`: the score `vtc.evaluate` gives the generated answer (`vtc.tasks.score`)."""
    sample = Sample([], doc["question"], doc["answer"], choices=doc.get("choices"), task=doc["task"])
    return {"accuracy": score(sample, results[0])}
