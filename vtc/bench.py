"""Side-by-side prefill measurement of compression configurations on one model.

Every configuration is measured in the same process, on the same model instance, in interleaved rounds (round r
times each configuration once), so that slow drifts of the machine (thermal, other load) hit all of them alike.
Latency is the median over rounds. FLOPs come from `vtc.flops` with the per-layer lengths the model really ran.
A configuration that cannot apply to the model (`vtc.compress` raises `ConfigError`, e.g. RVTC on a model with one
fixed resolution) is not measured: its row says why it was skipped.

`load_checkpoint` loads a local checkpoint folder (nothing is downloaded) for such a measurement, including the
processors of families with videos where transformers cannot build their video processor (see `load_processor`).
"""

from __future__ import annotations

import inspect
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .api import compress, last_stats, unpatch
from .config import VTCConfig
from .errors import ConfigError
from .flops import prefill_flops
from .registry import get_adapter, get_adapter_class

__all__ = ["AblationRow", "load_checkpoint", "load_processor", "measure_configs"]

InputsFn = Callable[[Any], Mapping[str, Any]]

# The sub-processors of a processor that takes images and videos, as every supported family with videos has.
_IMAGE_AND_VIDEO_SUB_PROCESSORS = {"image_processor", "tokenizer", "video_processor"}


def load_processor(path: str | os.PathLike) -> Any:
    """The processor saved in the local checkpoint folder `path`, as `AutoProcessor.from_pretrained(path,
    local_files_only=True)` loads it, and also where transformers cannot build its video processor.

    transformers' video processors need torchvision, which vtc does not require; and a folder written by
    `vtc make-tiny` has no video processor at all (`"video_processor": null`). In either case the family's processor
    is built from the folder's image processor, tokenizer and settings, without a video processor: it takes images
    only.
    """
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin
    from transformers.utils import is_torchvision_available

    from .adapters._tiny import processor_without_video

    settings, _ = ProcessorMixin.get_processor_dict(path, local_files_only=True)
    processor_class = getattr(transformers, settings.get("processor_class") or _default_processor_class(path), None)
    saved_without_video = "video_processor" in settings and settings["video_processor"] is None
    if (processor_class is None or set(processor_class.get_attributes()) != _IMAGE_AND_VIDEO_SUB_PROCESSORS
            or (is_torchvision_available() and not saved_without_video)):
        return AutoProcessor.from_pretrained(path, local_files_only=True)
    parameters = inspect.signature(processor_class.__init__).parameters
    options = {
        name: value for name, value in settings.items()
        if name in parameters and name not in _IMAGE_AND_VIDEO_SUB_PROCESSORS
        and parameters[name].kind is not inspect.Parameter.VAR_KEYWORD
    }
    return processor_without_video(
        processor_class,
        image_processor=AutoImageProcessor.from_pretrained(path, local_files_only=True),
        tokenizer=AutoTokenizer.from_pretrained(path, local_files_only=True),
        **options,
    )


def _default_processor_class(path: str | os.PathLike) -> str:
    """The name of the processor class that transformers pairs with the folder's `config.model_type` ('' if none)."""
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    return PROCESSOR_MAPPING_NAMES.get(AutoConfig.from_pretrained(path, local_files_only=True).model_type, "")


def load_model(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
) -> nn.Module:
    """Load the model (in eval mode) saved in the local checkpoint folder `path`.

    Raises:
        UnsupportedModelError: vtc has no adapter for the folder's `config.model_type` (checked before the weights
            are read).
        OSError, ValueError: transformers cannot load the folder.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    get_adapter_class(config.model_type)
    model = AutoModelForImageTextToText.from_pretrained(
        path, config=config, local_files_only=True, dtype=dtype, attn_implementation=attn_implementation
    )
    return model.eval()


def load_checkpoint(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
) -> tuple[nn.Module, Any]:
    """Load the model (in eval mode, `load_model`) and the processor (`load_processor`) saved in the local
    checkpoint folder `path`."""
    return load_model(path, dtype=dtype, attn_implementation=attn_implementation), load_processor(path)


@dataclass
class AblationRow:
    """One configuration's measurements. `*_rel` fields are relative to the row named `baseline`.

    A skipped configuration has `skipped` set to the reason and `None` for every measurement.
    """

    family: str
    config_name: str
    config: dict[str, Any]
    batch_size: int | None
    visual_tokens: list[int] | None
    layer_seq_lens: list[int] | None
    mean_layer_seq_len: float | None
    flops: int | None
    latency_ms: float | None
    latency_ms_all: list[float] | None
    kv_cache_mb: float | None
    peak_mem_mb: float | None
    flops_rel: float | None = 1.0
    latency_rel: float | None = 1.0
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_megabytes(cache: Any) -> float:
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
            cache_mb[name] = _cache_megabytes(output.past_key_values)
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

    rows = []
    for name in names:
        if name in skipped:
            rows.append(AblationRow(
                family=family, config_name=name, config=configs[name].to_dict(), batch_size=None,
                visual_tokens=None, layer_seq_lens=None, mean_layer_seq_len=None, flops=None, latency_ms=None,
                latency_ms_all=None, kv_cache_mb=None, peak_mem_mb=None, flops_rel=None, latency_rel=None,
                skipped=skipped[name],
            ))
            continue
        record = stats[name]
        lens = record["layer_seq_lens"]
        batch = len(record["visual_tokens"]) or 1
        rows.append(AblationRow(
            family=family,
            config_name=name,
            config=configs[name].to_dict(),
            batch_size=batch,
            visual_tokens=record["visual_tokens"],
            layer_seq_lens=lens,
            mean_layer_seq_len=sum(lens) / len(lens),
            flops=batch * prefill_flops(text_config, lens).total,
            latency_ms=statistics.median(timings[name]),
            latency_ms_all=timings[name],
            kv_cache_mb=cache_mb[name],
            peak_mem_mb=peak_mb[name],
        ))
    measured = [row for row in rows if row.skipped is None]
    reference = next((r for r in measured if r.config_name == "baseline"), measured[0] if measured else None)
    for row in measured:
        row.flops_rel = row.flops / reference.flops
        row.latency_rel = row.latency_ms / reference.latency_ms
    yield from rows
