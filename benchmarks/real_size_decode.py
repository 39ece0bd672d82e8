"""Phase 3 of `real_size.py`, decode: greedy generations of a fixed length, each configuration's first generation
timed apart, then interleaved rounds within the time guard."""

from __future__ import annotations

import time
from typing import Any

import torch
from decode_speed import timed_generate
from real_size_models import Family, Row, family_image_token
from real_size_run import Guard, log, median

import vtc
from vtc.bench import kv_cache_megabytes
from vtc.seams import output_cache


def generate_once(model, family: Family, row: Row, inputs, new_tokens: int) -> dict[str, float]:
    family.apply(model, row.config)  # outside the timed region
    result = timed_generate(model, inputs, new_tokens, family.device)
    if family.device.type == "cuda":
        result["peak_abs"] = torch.cuda.max_memory_allocated(family.device) / 2**20
    return result


def decode_phase(model, family: Family, rows: list[Row], inputs, new_tokens, repeats, guard: Guard, deadline,
                 batch: int) -> dict:
    """Generations of `new_tokens` greedy tokens: each configuration's first generation, then interleaved rounds.

    The first generation of each configuration is timed apart ("first tok/s") and only the rounds after it give
    "decode tok/s": a decode step at a KV length the process has not met before can cost several later steps' time
    (on the H200 at 7B and batch 32: 60-117 against 22-29 ms), so a configuration that happened to meet its lengths
    first would be charged for them. A round runs only if the time left covers it: the first round's estimate is the
    first generations' time, a later round's the round before it; where a whole round does not fit, as many of its
    generations as fit run, the baseline first. Rows whose first generation does not fit are skipped.
    """
    rows = [row for row in rows if row.name != "lvtc r1"]
    live = [row for row in rows if row.na is None]
    result: dict[str, Any] = {"batch": batch, "rows": {}, "rounds": 0}
    first, kv, lens = {}, {}, {}
    with torch.inference_mode():
        for row in live:  # the KV cache one prefill leaves, then the first generation
            if guard.left(deadline) <= 0:
                break
            family.apply(model, row.config)
            out = model(**inputs[row.inputs_key], use_cache=True, logits_to_keep=1)
            kv[row.name] = kv_cache_megabytes(output_cache(out))
            lens[row.name] = (list(vtc.last_stats(model)["layer_seq_lens"]) if row.config is not None else
                              [inputs[row.inputs_key]["input_ids"].shape[1]] * model.config.text_config.num_hidden_layers)
            del out
            start = time.perf_counter()
            first[row.name] = generate_once(model, family, row, inputs[row.inputs_key], new_tokens)
            first[row.name]["seconds"] = time.perf_counter() - start
        for row in live:
            if row.name not in first:
                result["rows"][row.name] = {"skipped": guard.skip(f"{family.key} decode batch {batch} {row.name}",
                                                                  "no time left for its first generation")}
        live = [row for row in live if row.name in first]
        runs: dict[str, list[dict]] = {row.name: [] for row in live}
        seconds = {row.name: first[row.name]["seconds"] for row in live}  # then each row's latest generation
        for r in range(repeats if live else 0):
            order, left = live[r % len(live):] + live[:r % len(live)], guard.left(deadline)
            last_round = left < sum(seconds[row.name] for row in order)
            if last_round:  # not a whole round: as many generations as fit, in the table's order (the baseline first)
                order, need = [], 0.0
                for row in live:
                    if need + seconds[row.name] <= left:
                        order.append(row)
                        need += seconds[row.name]
                missing = ", ".join(row.name for row in live if row not in order)
                what = f"round {r + 1} of {missing}" if order else f"round {r + 1}"
                what += f", rounds {r + 2}..{repeats}" if r + 1 < repeats else ""
                guard.skip(f"{family.key} decode batch {batch}: {what}", f"{max(0.0, left):.0f} s left")
            if not order:
                break
            log(f"{family.key} decode batch {batch}: round {r + 1}/{repeats} ({len(order)} generations of "
                f"{new_tokens} tokens, ~{sum(seconds[row.name] for row in order):.1f} s)")
            for row in order:
                start = time.perf_counter()
                runs[row.name].append(generate_once(model, family, row, inputs[row.inputs_key], new_tokens))
                seconds[row.name] = time.perf_counter() - start
            result["rounds"] = r + 1
            if last_round:
                break
    vtc.unpatch(model)
    base = runs.get("baseline") or []
    for row in rows:
        if row.na is not None:
            result["rows"][row.name] = {"na": row.na}
            continue
        if row.name not in first:
            result["rows"].setdefault(row.name, {"skipped": "time guard"})
            continue
        r, one = runs[row.name], first[row.name]
        entry = {"visual": int((inputs[row.inputs_key]["input_ids"][0] == family_image_token(model)).sum()),
                 "layer_lens": lens[row.name], "kv_mib": kv[row.name],
                 "kv_ratio": kv[row.name] / kv["baseline"] if "baseline" in kv else None,
                 "first_decode": one.get("decode"), "first": one, "raw": r}
        if r:
            entry.update(ttft=median(x["ttft"] for x in r), decode=median(x.get("decode") for x in r))
        if base and r:
            entry["ttft_speedup"] = median(b["ttft"] / x["ttft"] for b, x in zip(base, r))
            entry["decode_speedup"] = median(x["decode"] / b["decode"] for b, x in zip(base, r))
        if "peak" in one:
            entry["peak_mib"] = median(x["peak"] for x in r or [one])
            entry["peak_abs_mib"] = median(x["peak_abs"] for x in r or [one])
        result["rows"][row.name] = entry
    return result
