"""Phase 1 of `real_size.py`, the prefill: each configuration split into vision tower, projector and language
model, its oracle right after it, in interleaved rounds; medians and per-round ratios."""

from __future__ import annotations

import time
from typing import Any

import torch
from lvtc_speed import Oracle
from pvtc_speed import PartTimer, oracle_prefill
from real_size_models import Family, Row, family_image_token
from real_size_run import Guard, log, median, sync

import vtc
from vtc.flops import prefill_flops

#: an oracle LM speedup below this means the LM's time is the host's (kernel launches), not the sequence's
HOST_BOUND_ORACLE_SPEEDUP = 1.1


class FirstHookPartTimer(PartTimer):
    """`pvtc_speed.PartTimer` whose start hook runs before any other pre-hook (vtc's LM pre-hook included), so
    that the language model's time holds all of LVTC's own work."""

    first = True


class SequenceOracle(Oracle):
    """`lvtc_speed.Oracle` slicing cos/sin on the sequence axis (the second last), so that Qwen2-VL's M-RoPE
    `(3, batch, seq, dim)` is sliced like Llama's `(batch, seq, dim)`."""

    def shorten(self, _module, args, kwargs):
        self.full, n = args[0], self.length
        cos, sin = kwargs["position_embeddings"]
        mask = kwargs["attention_mask"]
        if isinstance(mask, torch.Tensor):
            mask = mask[..., :n, :n]
        self.kwargs = {**kwargs, "position_embeddings": (cos[..., :n, :], sin[..., :n, :]), "attention_mask": mask,
                       "position_ids": None}
        return (args[0][:, :n], *args[1:]), self.kwargs


def timed_parts(model, family: Family, inputs) -> dict[str, float]:
    """One prefill (`logits_to_keep=1`, as generate does), split into vision / projector / LM / total (ms)."""
    base = model.model
    timer = FirstHookPartTimer(family.device)
    for name, module in family.parts(model).items():
        timer.watch(name, module)
    pvtc = getattr(base, "vtc_pvtc", None)
    if pvtc is not None:
        timer.watch("pvtc", pvtc)
    timer.watch("lm", base.language_model)
    try:
        sync(family.device)
        start = time.perf_counter()
        model(**inputs, use_cache=True, logits_to_keep=1)
        sync(family.device)
        elapsed = dict(timer.elapsed, total=(time.perf_counter() - start) * 1e3)
    finally:
        timer.remove()
    native = elapsed.get("native projector", 0.0)
    projector = native + elapsed.get("pvtc", 0.0)
    vision = elapsed.get("tower", 0.0) - (native if family.projector_in_tower else 0.0)
    return {"vision": vision, "projector": projector, "lm": elapsed["lm"], "total": elapsed["total"]}


def run_config(model, family: Family, row: Row, inputs) -> dict[str, float]:
    family.apply(model, row.config)  # outside the timed region
    return timed_parts(model, family, inputs)


def run_oracle(model, family: Family, row: Row, inputs, k: int, restore: int, layer_lens) -> dict[str, float]:
    """The oracle of `row`, on the unpatched model: the LM part only (`lm`), or the whole model (`layers`)."""
    vtc.unpatch(model)
    batch, length = inputs["input_ids"].shape
    hooks = SequenceOracle(model, k, restore, layer_lens[k]) if "layers" in row.oracle else None
    try:
        if row.oracle.startswith("lm"):
            return {"lm": oracle_prefill(model, batch, length, family.device)}
        return timed_parts(model, family, inputs)
    finally:
        if hooks is not None:
            hooks.remove()


def layer_lens_of(model, family: Family, row: Row, inputs) -> list[int]:
    """The sequence length each decoder layer processes for `row` (one untimed prefill)."""
    family.apply(model, row.config)
    num_layers = model.config.text_config.num_hidden_layers
    model(**inputs, use_cache=True, logits_to_keep=1)
    if row.config is None:
        return [inputs["input_ids"].shape[1]] * num_layers
    return list(vtc.last_stats(model)["layer_seq_lens"])


def prefill_phase(model, family: Family, rows: list[Row], inputs, k, restore, repeats, guard: Guard, deadline,
                  batch: int) -> dict:
    """Interleaved rounds of every row and its oracle (back to back); medians and per-round ratios."""
    live = [row for row in rows if row.na is None]
    text_config = model.config.text_config
    result: dict[str, Any] = {"batch": batch, "rows": {}, "rounds": 0}
    with torch.inference_mode():
        lens = {row.name: layer_lens_of(model, family, row, inputs[row.inputs_key]) for row in live}
        visual = {row.name: int((inputs[row.inputs_key]["input_ids"][0] == family_image_token(model)).sum())
                  for row in live}
        samples: dict[str, list[dict]] = {row.name: [] for row in live}
        oracles: dict[str, list[dict]] = {row.name: [] for row in live if row.oracle}

        def one_round(order):
            for row in order:
                samples[row.name].append(run_config(model, family, row, inputs[row.inputs_key]))
                if row.oracle:
                    oracles[row.name].append(run_oracle(model, family, row, inputs[row.inputs_key], k, restore,
                                                        lens[row.name]))

        start = time.perf_counter()
        one_round(live)  # warm-up
        warm_s = time.perf_counter() - start
        for values in (*samples.values(), *oracles.values()):
            values.clear()
        rounds = max(0, min(repeats, int(guard.left(deadline) // max(warm_s, 1e-3))))
        if rounds < repeats:
            guard.skip(f"{family.key} prefill batch {batch}: rounds {rounds + 1}..{repeats}",
                       f"a round takes ~{warm_s:.1f} s, {max(0.0, guard.left(deadline)):.0f} s left for the prefill")
        for round_ in range(rounds):
            log(f"{family.key} prefill batch {batch}: round {round_ + 1}/{rounds}")
            shift = round_ % len(live)
            one_round(live[shift:] + live[:shift])
    vtc.unpatch(model)
    result.update(rounds=rounds, warmup_round_s=round(warm_s, 2))
    if rounds == 0:
        result["skipped"] = True
        return result

    base = samples["baseline"]
    flops = {name: prefill_flops(text_config, ls).total for name, ls in lens.items()}
    for row in rows:
        if row.na is not None:
            result["rows"][row.name] = {"na": row.na}
            continue
        runs = samples[row.name]
        entry: dict[str, Any] = {
            "visual": visual[row.name], "layer_lens": lens[row.name],
            **{part: median(r[part] for r in runs) for part in ("vision", "projector", "lm", "total")},
            "speedup": median(b["total"] / r["total"] for b, r in zip(base, runs)),
            "lm_speedup": median(b["lm"] / r["lm"] for b, r in zip(base, runs)),
            "flops_ratio": flops["baseline"] / flops[row.name],
            "raw": runs,
        }
        entry["of_flops"] = entry["lm_speedup"] / entry["flops_ratio"]
        if row.oracle:
            orc = oracles[row.name]
            entry["oracle_lm"] = median(o["lm"] for o in orc)
            entry["oracle_lm_speedup"] = median(b["lm"] / o["lm"] for b, o in zip(base, orc))
            entry["of_oracle"] = median(o["lm"] / r["lm"] for o, r in zip(orc, runs))
            entry["oracle_raw"] = orc
        if row.config is not None and row.config.pvtc is not None:
            extra = entry["projector"] - median(b["projector"] for b in base)
            saved = median(b["lm"] for b in base) - entry["lm"]
            entry["projector_cost"], why_na = projector_cost(extra, saved, entry.get("oracle_lm_speedup"))
            if why_na:
                entry["projector_cost_na"] = why_na
        if row.name == "lvtc r1":
            entry["overhead"] = median(r["lm"] / b["lm"] for b, r in zip(base, runs)) - 1
        result["rows"][row.name] = entry
    return result


def projector_cost(extra_ms: float, saved_ms: float, oracle_lm_speedup: float | None) -> tuple[float | None, str]:
    """PVTC's projector time beyond the native projector's over the LM time it saves, or None and why not.

    Where the oracle itself gains under `HOST_BOUND_ORACLE_SPEEDUP` (a 7B decoder at batch 1 on a GPU), the LM's time
    is the host's kernel launches: the shorter sequence saves nothing to weigh the projector against, and its cost
    shows in the whole prefill's speedup instead."""
    if oracle_lm_speedup is not None and oracle_lm_speedup < HOST_BOUND_ORACLE_SPEEDUP:
        return None, f"n/a (LM bound by the host: the oracle gains {oracle_lm_speedup:.2f}x)"
    if saved_ms <= 0:
        return None, "n/a (no LM time saved)"
    return extra_ms / saved_ms, ""
