"""`vtc info`: supported families, versions, attention backends."""

from __future__ import annotations

import argparse
import platform

__all__ = ["add_parser", "attention_backends", "run"]


def attention_backends() -> dict[str, bool]:
    """Which attention implementations transformers can use in this environment."""
    import torch
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    return {
        "eager": True,
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
        "flash_attention_2": bool(is_flash_attn_2_available()),
        "flash_attention_3": bool(is_flash_attn_3_available()),
        "flex_attention": hasattr(torch.nn.attention, "flex_attention"),
    }


def run(_args: argparse.Namespace) -> int:
    import torch
    import transformers

    from vtc.registry import supported_models
    from vtc.version import __version__

    print(f"vtc {__version__}  python {platform.python_version()}  torch {torch.__version__}  "
          f"transformers {transformers.__version__}")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"cuda device: {cuda}")
    print("supported model types: " + ", ".join(supported_models()))
    backends = attention_backends()
    print("attention backends: " + ", ".join(f"{k} ({'yes' if v else 'no'})" for k, v in backends.items()))
    return 0


def add_parser(commands, parents: list[argparse.ArgumentParser]) -> None:
    commands.add_parser("info", help="supported families, versions, attention backends",
                        parents=parents).set_defaults(func=run)
