"""The tables of `real_size.py`: its results as Markdown (prefill, flash, generation, targets, phase times, what
was skipped) and as JSON, written after every phase."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from common import markdown_table
from real_size_flash import AGREE_TOLERANCE, NOISE_FACTOR
from real_size_run import START

# The targets of the issue, at 7B.
OF_ORACLE_TARGET, LVTC_R1_OVERHEAD_TARGET, PROJECTOR_COST_TARGET = 0.95, 0.02, 0.10


def _f(value, fmt: str, missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def spans(lens: list[int]) -> str:
    if len(set(lens)) == 1:
        return str(lens[0])
    short = [n for n in lens if n != lens[0]]
    return f"{lens[0]} / {short[0]} x{len(short)}"


PREFILL_HEADER = ("config", "visual", "layer lengths", "vision", "projector", "LM", "total", "speedup", "LM speedup",
                  "oracle LM speedup", "of oracle", "LM FLOPs ratio", "of FLOPs", "proj cost / LM saved")


def _missing(name: str, e: dict, width: int, notes: list[str]) -> list[str] | None:
    """The row of a configuration that did not run (`n/a`, or skipped), its reason as a note under the table."""
    if "na" in e:
        notes.append(f"{name}: n/a, {e['na']}")
        return [name, "n/a (below)", *[""] * (width - 2)]
    if "skipped" in e:
        return [name, "skipped (time guard)", *[""] * (width - 2)]
    return None


def _with_notes(table: str, notes: list[str]) -> str:
    return "\n".join([table, *([""] + [f"* {n}" for n in notes] if notes else [])])


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def prefill_table(phase: dict) -> str:
    rows, notes = [], []
    for name, e in phase["rows"].items():
        missing = _missing(name, e, len(PREFILL_HEADER), notes)
        if missing:
            rows.append(missing)
            continue
        cost = "-" if "projector_cost" not in e else _f(e["projector_cost"], ".1%", e.get("projector_cost_na", "n/a"))
        rows.append([
            name, e["visual"], spans(e["layer_lens"]), _f(e["vision"], ".1f"), _f(e["projector"], ".2f"),
            _f(e["lm"], ".1f"), _f(e["total"], ".1f"), _x(e["speedup"]), _x(e["lm_speedup"]),
            _x(e.get("oracle_lm_speedup")), _f(e.get("of_oracle"), ".1%"), _x(e["flops_ratio"]),
            _f(e["of_flops"], ".1%"), cost,
        ])
    if "lvtc r1" in phase["rows"] and "overhead" in phase["rows"]["lvtc r1"]:
        notes.append(f"LVTC ratio-1 overhead (LM time, median of per-round ratios): "
                     f"{phase['rows']['lvtc r1']['overhead']:+.1%}")
    return _with_notes(markdown_table(PREFILL_HEADER, rows), notes)


def targets(results: dict, ratios: Sequence[int]) -> list[list[str]]:
    out = []
    for key, fam in results["families"].items():
        for batch, phase in fam.get("prefill", {}).items():
            if phase.get("skipped"):
                out.append([key, batch, "all", "-", "skipped (time guard)"])
                continue
            rows = phase["rows"]

            def check(target, value, ok, fmt=".1%", key=key, batch=batch):
                out.append([key, batch, target, _f(value, fmt, "n/a"),
                            "n/a" if value is None else ("met" if ok(value) else "NOT met")])

            for r in ratios:
                for kind in ("pvtc", "lvtc"):
                    e = rows.get(f"{kind} r{r}", {})
                    check(f"{kind.upper()} r{r} >= {OF_ORACLE_TARGET:.0%} of oracle", e.get("of_oracle"),
                          lambda v: v >= OF_ORACLE_TARGET)
            check(f"LVTC r1 overhead <= {LVTC_R1_OVERHEAD_TARGET:.0%}", rows.get("lvtc r1", {}).get("overhead"),
                  lambda v: v <= LVTC_R1_OVERHEAD_TARGET, "+.1%")
            for r in ratios:
                check(f"PVTC r{r} projector cost <= {PROJECTOR_COST_TARGET:.0%} of LM saved",
                      rows.get(f"pvtc r{r}", {}).get("projector_cost"), lambda v: v <= PROJECTOR_COST_TARGET)
    return out


FLASH_HEADER = ("config", "SDPA calls", "with a mask", "default ms", "flash ms", "flash speedup",
                "flash vs default", "flash vs math", "default vs math", "agree", "decode under flash")


def _rel(rel) -> str:
    return "-" if rel is None else f"{rel[0]:.1e} / {rel[1]:.1e}"


def flash_table(phase: dict) -> str:
    rows, notes = [], []
    for name, e in phase["rows"].items():
        missing = _missing(name, e, len(FLASH_HEADER), notes)
        if missing:
            rows.append(missing)
            continue
        masked = str(e["masked_calls"])
        if e["first_masked"]:
            notes.append(f"{name}: first masked SDPA call: {e['first_masked']}")
        if "prefill_error" in e:
            rows.append([name, e["sdpa_calls"], masked, "", "", "", "", "", _rel(e["default_vs_math"]),
                         "flash refused (below)", ""])
            notes.append(f"{name}: {e['prefill_error']}")
            continue
        calls = f"{e['decode_masked_calls']} of {e['decode_sdpa_calls']} calls masked"
        if "decode_error" in e:
            decode = f"refused ({calls}; below)"
            notes.append(f"{name}, decode: {e['decode_error']}")
        else:
            decode = (f"{'agrees' if e['decode_agree'] else 'DIFFERS'} ({_rel(e['decode_rel'])} over "
                      f"{e['decode_steps_compared']} steps; default vs math {_rel(e['decode_default_vs_math'])} over "
                      f"{e['decode_math_steps_compared']}; {calls})")
        rows.append([name, e["sdpa_calls"], masked, _f(e["default_ms"], ".1f"), _f(e["flash_ms"], ".1f"),
                     _x(e["default_ms"] / e["flash_ms"]), _rel(e["flash_vs_default"]), _rel(e["flash_vs_math"]),
                     _rel(e["default_vs_math"]), "yes" if e["agree"] else "NO", decode])
    table = markdown_table(FLASH_HEADER, rows)
    legend = ("Differences: mean |a - b| / mean |b| and max |a - b| / max |b| of the final hidden states at every "
              "position (decode: of each step's logits, over the steps whose tokens agreed); agree: flash vs default "
              f"<= {NOISE_FACTOR:g} x default vs math + a fixed tolerance ("
              + ", ".join(f"{str(k).replace('torch.', '')} {m:.0e} / {x:.0e}" for k, (m, x) in AGREE_TOLERANCE.items())
              + "), for the mean and the max alike: flash may differ from the default backend no more than the "
              "backends differ among themselves in this run (the noise floor; random-weight models in low precision "
              "amplify rounding over many layers). Decode under flash is judged the same way against default vs math "
              "of a greedy generate under the math backend, its step logits compared with the default backend's.")
    return _with_notes(table, [legend, *notes])


def decode_table(phase: dict, cuda: bool) -> str:
    header = ["config", "visual", "layer lengths", "TTFT ms", "TTFT speedup", "decode tok/s", "decode speedup",
              "first tok/s", "KV MiB", "KV ratio"]
    header += ["peak MiB", "peak above weights MiB", "peak ratio"] if cuda else []
    rows, notes, base = [], [], phase["rows"].get("baseline", {})
    for name, e in phase["rows"].items():
        missing = _missing(name, e, len(header), notes)
        if missing:
            rows.append(missing)
            continue
        row = [name, e["visual"], spans(e["layer_lens"]), _f(e.get("ttft"), ".1f"), _x(e.get("ttft_speedup")),
               _f(e.get("decode"), ".1f"), _x(e.get("decode_speedup")), _f(e["first_decode"], ".1f"),
               _f(e["kv_mib"], ".1f"), _f(e["kv_ratio"], ".3f")]
        if cuda:
            ratio = e["peak_mib"] / base["peak_mib"] if base.get("peak_mib") else None
            row += [_f(e["peak_abs_mib"], ".0f"), _f(e["peak_mib"], ".0f"), _f(ratio, ".3f")]
        rows.append(row)
    return _with_notes(markdown_table(header, rows), notes)


def format_params(count: float) -> str:
    return f"{count / 1e9:.2f} B" if count >= 1e8 else f"{count / 1e6:.2f} M"


def render(results: dict) -> str:
    meta = results["meta"]
    cuda = meta["device"].startswith("cuda")
    out = [f"# Real sizes: {'tiny shapes (a check of the script, not a measurement)' if meta['tiny'] else '7B shapes'}",
           "",
           f"{meta['device_name']}, {meta['dtype']}, {meta['attn']}, torch {meta['torch']}, transformers "
           f"{meta['transformers']}, {meta['threads']} CPU threads; batches {meta['batches']}; prefill: median of "
           f"{meta['repeats']} interleaved rounds after a warm-up round (ms); decode: {meta['new_tokens']} new "
           f"tokens, {meta['decode_repeats']} round(s); LVTC K={meta['compress_layer']}, L={meta['restore_layer']}; "
           f"time budget {meta['budget_s']:.0f} s, used {meta.get('elapsed_s', 0):.0f} s"
           f"{'' if meta.get('finished') else ' (run still going or cut short)'}.",
           ""]
    for key, fam in results["families"].items():
        weights = f", {fam['weights_mib']:.0f} MiB on the device" if "weights_mib" in fam else ""
        out += [f"## {fam['title']}", "", f"{format_params(fam.get('params', 0))} parameters{weights}; built in "
                f"{fam.get('build_s', 0):.1f} s; LVTC K={fam.get('k')}, L={fam.get('restore')} of "
                f"{fam.get('num_layers')} layers.", ""]
        for batch, phase in fam.get("prefill", {}).items():
            out += [f"### {key}: prefill, batch {batch} ({phase['rounds']} rounds; ms)", ""]
            out += ["skipped by the time guard", ""] if phase.get("skipped") else [prefill_table(phase), ""]
        if "flash" in fam:
            out += [f"### {key}: flash SDPA forced, batch {fam['flash']['batch']}", "", flash_table(fam["flash"]), ""]
        for batch, phase in fam.get("decode", {}).items():
            out += [f"### {key}: generation, batch {batch} ({phase['rounds']} round(s))", "",
                    decode_table(phase, cuda), ""]
    out += ["## Targets", "", markdown_table(("model", "batch", "target", "value", "met"),
                                             targets(results, meta["ratios"])), ""]
    out += ["## Phase times (s)", "", markdown_table(
        ("model", "phase", "planned", "took"),
        [[p["family"], p["phase"], _f(p.get("planned"), ".1f"), _f(p.get("took"), ".1f")]
         for p in results["phases"]]), ""]
    out += ["## Skipped", ""] + ([f"* {s}" for s in results["skipped"]] or ["nothing"]) + [""]
    return "\n".join(out)


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def write(results: dict, out: Path) -> None:
    results["meta"]["elapsed_s"] = time.perf_counter() - START
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_size.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (out / "real_size.md").write_text(render(results))
