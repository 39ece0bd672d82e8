"""Tasks with known answers, for the accuracy side of an ablation.

    samples = vtc.tasks.synthetic("grid-readout", split="test", size=256, seed=0)
    vtc.tasks.score(samples[0], "red blue ...")
"""

from .prompt import build_prompt
from .sample import Sample
from .synthetic import available, score, synthetic

__all__ = ["Sample", "available", "build_prompt", "score", "synthetic"]
