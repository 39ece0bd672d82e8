"""Side-by-side prefill measurement of compression configurations on one model.

Every configuration is measured in the same process, on the same model instance, in interleaved rounds (round r
times each configuration once), so that slow drifts of the machine (thermal, other load) hit all of them alike.
Latency is the median over rounds. FLOPs come from `vtc.flops` with the per-layer lengths the model really ran.
A configuration that cannot apply to the model (`vtc.compress` raises `ConfigError`, e.g. RVTC on a model with one
fixed resolution) is not measured: its row says why it was skipped.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .api import compress, last_stats, unpatch
from .config import VTCConfig
from .errors import ConfigError
from .flops import prefill_flops
from .registry import get_adapter
from .seams import output_cache

__all__ = ["AblationRow", "example_inputs", "kv_cache_megabytes", "measure_configs"]

InputsFn = Callable[[Any], Mapping[str, Any]]


@dataclass
class AblationRow:
    """One configuration of one model: a row of the `vtc ablate` table. Scored on a task's samples
    (`vtc.ablate.evaluate_grid`), or a timed prefill of one batch (`measure_configs`, with `task` None), or both
    joined (`vtc.ablate.add_latency`).

    `visual_tokens` and `prefill_flops` are means per sample over the `n` samples; `accuracy_rel`, `flops_rel` and
    `latency_rel` are relative to the `baseline` row of the same model (and task); every measurement is `None` where
    it was not taken.
    A skipped row has `skipped` set to why the configuration does not apply and `None` for every measurement. A
    trained run's row (`vtc.ablate.evaluate_trained`) has `trained` set to how it was trained (e.g. `compressor, 7
    steps, lm`) and `run` to its folder; both are `None` on the training-free rows. The fields up to `run` are the
    columns of the files `vtc ablate` writes; the last three, per sample and per layer, only `measure_configs` fills.
    """

    family: str
    task: str | None
    config_name: str
    config: dict[str, Any]
    n: int
    accuracy: float | None
    visual_tokens: float | None
    prefill_flops: float | None
    accuracy_rel: float | None = None
    flops_rel: float | None = None
    latency_ms: float | None = None
    latency_rel: float | None = None
    kv_cache_mb: float | None = None
    peak_mem_mb: float | None = None
    skipped: str | None = None
    trained: str | None = None
    run: str | None = None
    sample_visual_tokens: list[int] | None = None  # each sample's image placeholders
    layer_seq_lens: list[int] | None = None  # the tokens each decoder layer ran
    latency_ms_all: list[float] | None = None  # every timed round


def example_inputs(processor: Any, image_sizes: Sequence[tuple[int, int]], *, batch: int = 1,
                   text: str = "Describe the image.") -> Mapping[str, Any]:
    """Processor outputs for `batch` prompts, each with one synthetic (seeded noise) image of the given
    `(width, height)` (cycled), built with the processor's chat template when it has one: what `vtc ablate --model`
    times."""
    from vtc.testing import tiny_images

    sizes = [image_sizes[i % len(image_sizes)] for i in range(batch)]
    images = tiny_images(sizes)
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        prompt = f"{processor.image_token} {text}"
    return processor(images=[[im] for im in images], text=[prompt] * batch, return_tensors="pt", padding=True)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kv_cache_megabytes(cache: Any) -> float:
    """Bytes held by a transformers cache (all layers, keys and values), in MiB."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total / 2**20


def _prefill(model: nn.Module, inputs: Mapping[str, Any]):
    # `generate` computes logits for the last position only at prefill; do the same so that the vocabulary
    # projection does not dominate the measurement of what compression changes.
    return model(**inputs, use_cache=True, logits_to_keep=1)


def _timed_prefill(model: nn.Module, inputs: Mapping[str, Any], device: torch.device) -> tuple[float, Any]:
    _synchronize(device)
    start = time.perf_counter()
    output = _prefill(model, inputs)
    _synchronize(device)
    return (time.perf_counter() - start) * 1e3, output


def _peak_memory_mb(model: nn.Module, inputs: Mapping[str, Any], device: torch.device) -> float | None:
    """Peak device memory of one prefill above what was allocated before it (CUDA only; None elsewhere)."""
    if device.type != "cuda":
        return None
    _synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    _prefill(model, inputs)
    _synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def measure_configs(
    model: nn.Module,
    processor: Any,
    configs: Mapping[str, VTCConfig],
    inputs_fn: InputsFn,
    *,
    family: str,
    repeats: int = 5,
    warmup: int = 1,
    progress: Callable[[], None] | None = None,
) -> Iterator[AblationRow]:
    """Measure each configuration's prefill on `model`; yield one row per configuration.

    Args:
        configs: name → config; the name `baseline` (if present) is the reference for the relative columns. A
            configuration that `vtc.compress` refuses for this model with `ConfigError` gets a skipped row.
        inputs_fn: builds the model inputs from the (possibly vtc-patched) processor, so that placeholder counts
            always match the configuration being measured.
        repeats: timed rounds; each round times every configuration once, interleaved.
        warmup: untimed prefills per configuration before the first round.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = next(model.parameters()).device
    text_config = get_adapter(model).text_config
    names = list(configs)
    inputs: dict[str, Mapping[str, Any]] = {}
    timings: dict[str, list[float]] = {name: [] for name in names}
    stats: dict[str, dict[str, Any]] = {}
    cache_mb: dict[str, float] = {}
    peak_mb: dict[str, float | None] = {}
    skipped: dict[str, str] = {}

    with torch.inference_mode():
        for name in names:  # warm up every configuration and collect what does not need repeating
            try:
                compress(model, configs[name], processor=processor)
            except ConfigError as error:  # compress is atomic: the model and processor are untouched
                skipped[name] = str(error)
                continue
            inputs[name] = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                            for k, v in inputs_fn(processor).items()}
            for _ in range(warmup):
                _prefill(model, inputs[name])
            output = _prefill(model, inputs[name])
            stats[name] = last_stats(model)
            cache_mb[name] = kv_cache_megabytes(output_cache(output))
            peak_mb[name] = _peak_memory_mb(model, inputs[name], device)
        for _ in range(repeats):
            for name in names:
                if name not in skipped:
                    compress(model, configs[name], processor=processor)
                    elapsed, _ = _timed_prefill(model, inputs[name], device)
                    timings[name].append(elapsed)
                if progress is not None:
                    progress()
    unpatch(model)

    # Every configuration times a batch of the same samples: a skipped one would have too.
    batch = next((len(record["visual_tokens"]) or 1 for record in stats.values()), 0)
    rows = []
    for name in names:
        if name in skipped:
            rows.append(AblationRow(family, None, name, configs[name].to_dict(), batch, None, None, None,
                                    skipped=skipped[name]))
            continue
        record = stats[name]
        rows.append(AblationRow(
            family, None, name, configs[name].to_dict(), batch, accuracy=None,
            visual_tokens=sum(record["visual_tokens"]) / batch,
            prefill_flops=prefill_flops(text_config, record["layer_seq_lens"]).total,
            latency_ms=statistics.median(timings[name]),
            kv_cache_mb=cache_mb[name],
            peak_mem_mb=peak_mb[name],
            sample_visual_tokens=record["visual_tokens"],
            layer_seq_lens=record["layer_seq_lens"],
            latency_ms_all=timings[name],
        ))
    measured = [row for row in rows if row.skipped is None]
    reference = next((r for r in measured if r.config_name == "baseline"), measured[0] if measured else None)
    for row in measured:
        row.flops_rel = row.prefill_flops / reference.prefill_flops
        row.latency_rel = row.latency_ms / reference.latency_ms
    yield from rows
