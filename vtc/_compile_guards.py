"""vtc's hooks under `torch.compile`: told apart from their absence, and never a graph of their own.

**Hook guards.**

Dynamo reuses code it compiled for one instance of a class on every other instance whose guards pass, and by default
it does not guard a module's *empty* hook dicts (`torch._dynamo.config.skip_nnmodule_hook_guards`, documented there
as unsafe when hooks are added). Code compiled for a module without hooks then also runs for one with hooks and
silently skips them: a compressed model of the same class as a model compiled earlier in the process (or compiled
itself before `vtc.compress`) ran uncompressed under `torch.compile`. Hooks that are present are guarded (by their
ids), so only the empty case needs the setting.

`require_hook_guards` turns the guards on, once per process, and then drops the code dynamo compiled without them:
it may be reused for a module that now has hooks. The setting is global and stays on (compiled code of other models
may depend on it); its cost is a length check per hook dict of each compiled module at each call.

**Hooks inside their caller's graph.** Where dynamo traces a module call, it traces the module's hooks into the same
graph. Where the calling code runs eagerly (a model whose loop over decoder layers breaks the graph runs that loop
eagerly and compiles each layer on its own), dynamo would compile each hook as a frame, and so a graph, of its own:
a compressed model would then compile more graphs than the unpatched one. `compiled_only_inlined` marks a function's
code so that dynamo never compiles it, nor anything it calls, as a frame of its own, while still tracing it inline
from a frame it compiles: a hook then joins its caller's graph, or runs eagerly with its caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

Function = TypeVar("Function", bound=Callable)


def compiled_only_inlined(function: Function) -> Function:
    """Mark `function` (a plain function or one defined in a class body) so that dynamo compiles it only as part
    of a traced caller; called from eager code, it and everything it calls run eagerly. Returns it unchanged."""
    try:
        from torch._C._dynamo.eval_frame import _FrameAction, _FrameExecStrategy, set_code_exec_strategy
    except ImportError:  # a torch without frame strategies: the hooks compile as graphs of their own, still correct
        return function
    # (what to do with this frame, with the frames it calls): never compile either
    set_code_exec_strategy(function.__code__, _FrameExecStrategy(_FrameAction.SKIP, _FrameAction.SKIP))
    return function


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
