"""Built-in adapters, one module per model family. Importing this package registers them."""

from . import internvl, llava, qwen_vl  # noqa: F401  (imported for their @register_adapter side effect)
