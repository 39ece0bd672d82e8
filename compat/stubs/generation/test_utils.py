"""Stand-in for transformers' ``tests/generation/test_utils.py``, which the source distribution does not ship.

``ModelTesterMixin`` only names ``GenerationTesterMixin`` in ``issubclass`` checks; the suite's test classes do not
derive from it (vtc's own tests cover generation under every component).
"""


class GenerationTesterMixin:
    pass
