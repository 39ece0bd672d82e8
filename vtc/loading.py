"""Load a local checkpoint folder: the model and its processor, nothing downloaded.

    model, processor = vtc.loading.load_checkpoint("/models/my-vlm-checkpoint")

`load_processor` also loads the processors of families with videos where transformers cannot build their video
processor (it needs torchvision, which vtc does not require; a folder written by `vtc make-tiny` has none): the
family's processor is then built without one (`processor_without_video`) and takes images only.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any

import torch
from torch import nn
from transformers import ProcessorMixin

from .registry import get_adapter_class

__all__ = ["load_checkpoint", "load_model", "load_processor", "processor_without_video"]

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


def processor_without_video(cls: type[ProcessorMixin], **kwargs) -> ProcessorMixin:
    """Construct the processor class ``cls`` (one that takes a ``video_processor``) with none: images only.

    transformers' video processors need torchvision, which is not a dependency of vtc. The processor works on images,
    saves with ``save_pretrained`` (its ``processor_config.json`` records ``"video_processor": null``) and loads back
    with :func:`load_processor`.
    """
    # ProcessorMixin.__init__ checks each sub-processor's class; without torchvision the lookup for `video_processor`
    # raises AttributeError ('_extra_content'), even for None. Shadow the check on this one instance, during __init__
    # only, so that a None video processor is accepted: every other argument is still checked and nothing in
    # transformers is modified.
    proc = cls.__new__(cls)
    check = proc.check_argument_for_proper_class

    def check_except_missing_video(name, value):
        if name == "video_processor" and value is None:
            return None
        return check(name, value)

    proc.check_argument_for_proper_class = check_except_missing_video
    try:
        proc.__init__(video_processor=None, **kwargs)
    finally:
        del proc.check_argument_for_proper_class
    # save_pretrained saves every sub-processor that get_attributes() names and fails on the missing one, so this
    # instance names only those it has. A partial of `list` (not a lambda) keeps the processor picklable and copyable.
    present = tuple(name for name in cls.get_attributes() if name != "video_processor")
    proc.get_attributes = functools.partial(list, present)
    return proc
