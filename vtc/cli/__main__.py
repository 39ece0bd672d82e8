"""`python -m vtc.cli COMMAND ...`, the same as `vtc COMMAND ...` (and what `torchrun ... -m vtc.cli train` runs)."""

import sys

from . import main

sys.exit(main())
