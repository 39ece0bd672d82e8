"""vtc's lmms-eval model (`--model vtc`): any supported local checkpoint, compressed with any vtc configuration.

    python -m lmms_eval --model vtc --model_args pretrained=FOLDER,config=pvtc4.json,batch_size=8 --tasks mme

From Python, on a model already loaded (one configuration per call; `costs()` gives the vtc side of the row):

    lm = VTCModel.from_model(model, processor, config=config, batch_size=8)
    results = lmms_eval.evaluator.simple_evaluate(model=lm, tasks=[...], task_manager=...)
    lm.costs()          # per task: documents, mean visual tokens, mean prefill FLOPs

Prompts are `vtc.tasks.build_prompt`'s (the processor's chat template with the images before the task's text), so an
lmms-eval task over `vtc.tasks` samples scores what `vtc.evaluate` scores. Requests are answered in the order
lmms-eval gives them, `batch_size` at a time, left-padded for generation and right-padded for scoring. Each request's
visual tokens at the LLM input and analytic prefill FLOPs (`vtc.evaluate.prefill_costs`) go into lmms-eval's logged
samples (`--log_samples`: `token_counts`), into `costs()`, and into the `stats=` file. No latency is measured here:
the harness's own work sits inside any timing taken around the requests; `vtc ablate --model` and `benchmarks/`
measure speed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..api import compress
from ..config import VTCConfig
from ..errors import ConfigError, InputError, UnsupportedModelError
from ..evaluate import PrefillCost, generate_answers, prefill_costs
from ..registry import get_adapter
from ..tasks import Sample
from .generation import cut_at_stop, generation_options
from .options import ModelArgs, parse_arg_string
from .scoring import continuation_scores

__all__ = ["VTCModel", "VTCTokenCounts"]


@dataclass
class VTCTokenCounts(TokenCounts):
    """lmms-eval's per-request token counts, with what vtc measures: the request's image placeholders at the
    language model's input and the analytic FLOPs of its prefill."""

    visual_tokens: int | None = None
    prefill_flops: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "visual_tokens": self.visual_tokens, "prefill_flops": self.prefill_flops}


def _check_one_process() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UnsupportedModelError("vtc's lmms-eval model runs in one process: launch lmms-eval with python, not "
                                    "with accelerate launch or torchrun over several processes")


class VTCModel(lmms):
    """An lmms-eval model over a model of a supported family, compressed with a vtc configuration or not.

    `VTCModel(**model_args)` is what `--model vtc --model_args ...` builds (`vtc.lmms.options.KEYS` lists the
    keys); `VTCModel.from_model(model, processor, ...)` wraps a model already loaded.
    """

    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        options = ModelArgs.parse(model_args)
        _check_one_process()
        model, processor = options.load()
        self._bind(model, processor, options.batch_size, options.stats, owns_model=True)

    @classmethod
    def from_model(cls, model: nn.Module, processor: Any, *, config: VTCConfig | None = None, batch_size: int = 1,
                   stats: str | os.PathLike | None = None) -> VTCModel:
        """Wrap an already loaded model and its processor (the one passed to `vtc.compress`, if it is compressed).

        Args:
            config: compress the model with it first (replacing any compression); `None`: use it as it is.
            batch_size: requests per forward or `generate` call.
            stats: a JSONL file for each request's visual tokens and prefill FLOPs.

        The model is put in eval mode and stays the caller's: lmms-eval's `clean()` after the requests leaves it
        in place, compressed.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError("batch_size", batch_size, "a positive integer")
        _check_one_process()
        if config is not None:
            compress(model, config, processor=processor)
        instance = cls.__new__(cls)
        lmms.__init__(instance)
        instance._bind(model.eval(), processor, batch_size, None if stats is None else Path(stats),
                       owns_model=False)
        return instance

    @classmethod
    def create_from_arg_string(cls, arg_string: str | Mapping[str, Any],
                               additional_config: Mapping[str, Any] | None = None) -> VTCModel:
        """Build from `--model_args` (a `key=value,...` string, or a dict) and the harness's own settings
        (`--batch_size`, `--device`); a key given in `--model_args` wins."""
        values = parse_arg_string(arg_string) if isinstance(arg_string, str) else dict(arg_string)
        harness = {key: value for key, value in (additional_config or {}).items() if value is not None}
        return cls(**{**harness, **values})

    def _bind(self, model: nn.Module, processor: Any, batch_size: int, stats: Path | None, owns_model: bool) -> None:
        get_adapter(model)  # an unsupported model fails here, before any request
        self._model, self.processor = model, processor
        self.batch_size, self.stats_path, self._owns_model = batch_size, stats, owns_model
        self.request_costs: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------------------ the model
    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    def clean(self) -> None:
        """Called by lmms-eval once the requests are answered: a model this instance loaded is released (lmms-eval
        may load a judge next); a model given to `from_model` stays with its owner."""
        if self._owns_model:
            super().clean()

    # --------------------------------------------------------------------------------------------- the requests
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Answer each request (context, generation kwargs, doc_to_visual, doc_id, task, split) by generating after
        its prompt; the generation kwargs are honoured as `generation_options` says."""
        results = []
        for batch in self._batches(requests, "vtc generate", key=lambda args: args[1]):
            options, until = generation_options(batch[0].args[1])
            samples = [self._sample(request) for request in batch]
            with torch.no_grad():
                generated = generate_answers(self._model, self.processor, samples, **options)
            counts = self._record(batch, generated.inputs)
            for answer, new_tokens, request_counts in zip(generated.answers, generated.new_tokens, counts):
                request_counts.output_tokens = new_tokens
                results.append(GenerationResult(cut_at_stop(answer, until), request_counts))
        self._write_stats()
        return results

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Score each request (context, continuation, doc_to_visual, doc_id, task, split): `(loss, greedy)`, the
        continuation's mean negative log-likelihood per token and whether greedy decoding would write it.

        lmms-eval's multiple-choice scoring picks the choice with the smallest first value (its own models return
        their loss). The pair travels in a `GenerationResult`: lmms-eval 0.7 turns any other non-text response into
        a string.
        """
        results = []
        for batch in self._batches(requests, "vtc loglikelihood", key=lambda args: None):
            samples = [self._sample(request) for request in batch]
            continuations = [self._continuation(request) for request in batch]
            with torch.no_grad():
                scores, inputs = continuation_scores(self._model, self.processor, samples, continuations)
            counts = self._record(batch, inputs)
            results += [GenerationResult((score.loss, score.greedy), request_counts)
                        for score, request_counts in zip(scores, counts)]
        self._write_stats()
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("vtc's lmms-eval model answers single-round tasks (generate_until, "
                                  "loglikelihood); multi-round tasks are not supported")

    def _batches(self, requests: Sequence[Instance], description: str,
                 key: Callable[[tuple], Any]) -> Iterator[list[Instance]]:
        """Consecutive requests, `batch_size` at a time, a new batch wherever `key(args)` changes (the generation
        kwargs: one `generate` call takes one setting). The order is lmms-eval's, so that a task's documents are
        batched as `vtc.evaluate` batches the same samples."""
        batch: list[Instance] = []
        with tqdm(total=len(requests), desc=description, unit="request", disable=self.rank != 0) as bar:
            for request in requests:
                if batch and (len(batch) == self.batch_size or key(request.args) != key(batch[0].args)):
                    yield batch
                    bar.update(len(batch))
                    batch = []
                batch.append(request)
            if batch:
                yield batch
                bar.update(len(batch))

    def _document(self, request: Instance) -> dict[str, Any]:
        *_, doc_id, task, split = request.args
        return self.task_dict[task][split][doc_id]

    def _sample(self, request: Instance) -> Sample:
        """The request as a `vtc.tasks.Sample`: the task's images and its text as the question."""
        if len(request.args) != 6:
            raise InputError(f"task {request.task_name}: a request without a document ({len(request.args)} "
                             "arguments); vtc's lmms-eval model does not take acc_mutual_info's unconditional "
                             "requests")
        context, _, doc_to_visual, doc_id, task, _ = request.args
        visuals = doc_to_visual(self._document(request)) if doc_to_visual is not None else None
        images = []
        for visual in visuals or []:
            for item in visual if isinstance(visual, (list, tuple)) else [visual]:
                if not isinstance(item, Image.Image):
                    raise InputError(f"task {task}, document {doc_id}: a {type(item).__name__} where an image was "
                                     "expected; vtc's lmms-eval model takes images (no videos or audio)")
                images.append(item.convert("RGB"))
        return Sample(images, context, "", task=task)

    def _continuation(self, request: Instance) -> str:
        continuation = request.args[1]
        return continuation if isinstance(continuation, str) else continuation(self._document(request))

    # ------------------------------------------------------------------------------------------------ the costs
    def _record(self, batch: Sequence[Instance], inputs: Any) -> list[VTCTokenCounts]:
        """Note each request's prefill cost (the forward or `generate` call just run on `inputs`)."""
        costs: list[PrefillCost] = prefill_costs(self._model, inputs)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        counts = []
        for request, cost, tokens in zip(batch, costs, prompt_tokens):
            *_, doc_id, task, _ = request.args
            self.request_costs.append({"task": task, "doc_id": doc_id, "request": request.request_type,
                                       "visual_tokens": cost.visual_tokens, "prefill_flops": cost.prefill_flops})
            counts.append(VTCTokenCounts(input_tokens=int(tokens), visual_tokens=cost.visual_tokens,
                                         prefill_flops=cost.prefill_flops))
        return counts

    def _write_stats(self) -> None:
        if self.stats_path is None:
            return
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        self.stats_path.write_text("".join(json.dumps(record) + "\n" for record in self.request_costs))

    def costs(self) -> dict[str, dict[str, float]]:
        """Per task: `documents`, and the means over documents of `visual_tokens` and `prefill_flops` (a
        multiple-choice document's are the means over its choices' forwards)."""
        by_task: dict[str, dict[Any, list[dict[str, Any]]]] = {}
        for record in self.request_costs:
            by_task.setdefault(record["task"], {}).setdefault(record["doc_id"], []).append(record)
        return {task: {"documents": len(documents),
                       **{key: fmean(fmean(r[key] for r in records) for records in documents.values())
                          for key in ("visual_tokens", "prefill_flops")}}
                for task, documents in by_task.items()}
