"""Tasks with known answers, for the accuracy side of an ablation.

    samples = vtc.tasks.synthetic("grid-readout", split="test", size=256, seed=0)
    vtc.tasks.score(samples[0], "red blue ...")
"""

from .datasets import load_from_disk, load_jsonl, save_jsonl
from .prompt import build_prompt
from .reference import reference_families, reference_model
from .sample import Sample
from .synthetic import available, score, synthetic, vocabulary

__all__ = ["Sample", "available", "build_prompt", "load_from_disk", "load_jsonl", "reference_families",
           "reference_model", "save_jsonl", "score", "synthetic", "vocabulary"]
