"""Make `torch.compile` tell a module with vtc's hooks from one without them.

Dynamo reuses code it compiled for one instance of a class on every other instance whose guards pass, and by default
it does not guard a module's *empty* hook dicts (`torch._dynamo.config.skip_nnmodule_hook_guards`, documented there
as unsafe when hooks are added). Code compiled for a module without hooks then also runs for one with hooks and
silently skips them: a compressed model of the same class as a model compiled earlier in the process (or compiled
itself before `vtc.compress`) ran uncompressed under `torch.compile`. Hooks that are present are guarded (by their
ids), so only the empty case needs the setting.

`require_hook_guards` turns the guards on, once per process, and then drops the code dynamo compiled without them:
it may be reused for a module that now has hooks. The setting is global and stays on (compiled code of other models
may depend on it); its cost is a length check per hook dict of each compiled module at each call.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def require_hook_guards() -> None:
    import torch._dynamo

    config = torch._dynamo.config
    if not config.skip_nnmodule_hook_guards:
        return
    config.skip_nnmodule_hook_guards = False
    # Code compiled before this has no guard on empty hook dicts: compile it again, guarded.
    torch._dynamo.reset()
    logger.info("vtc: torch._dynamo.config.skip_nnmodule_hook_guards set to False (and dynamo's compiled code "
                "reset) so that compiled code is never reused across modules with and without vtc's hooks")
