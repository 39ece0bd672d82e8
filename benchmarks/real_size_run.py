"""What every phase of `real_size.py` shares: the run's clock and progress lines, device syncs, the time guard,
and the median that leaves out what was not measured."""

from __future__ import annotations

import statistics
import time

import torch

#: the run's start: progress lines count from it, and the time budget runs from it
START = time.perf_counter()


def log(message: str) -> None:
    """A progress line with the seconds since the start and the wall-clock time."""
    print(f"[{time.perf_counter() - START:7.1f} s | {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def error_line(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160]}"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Guard:
    """The global time budget, and the deadline of the phase running now.

    Each model gets the share of what is left when it starts that its planned seconds are of all the models still to
    run (`plan`); after its build, its prefill may run until the prefill's planned share of what is left of that,
    the flash check likewise, and decode takes the rest. Time a phase does not use flows to the next one; a phase
    that would overrun its deadline runs fewer rounds or skips rows, and says so.
    """

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self.deadline = START + budget_s
        self.skipped: list[str] = []

    def left(self, deadline: float | None = None) -> float:
        return min(self.deadline, deadline or self.deadline) - time.perf_counter()

    def family_end(self, planned_family: float, planned_left: float) -> float:
        now = time.perf_counter()
        return now + max(0.0, self.deadline - now) * planned_family / max(planned_left, 1e-9)

    @staticmethod
    def phase_deadlines(end: float, planned: dict[str, float]) -> dict[str, float]:
        """`planned`: the seconds of prefill, flash and decode."""
        now, total = time.perf_counter(), max(sum(planned.values()), 1e-9)
        span = max(0.0, end - now)
        prefill = now + span * planned["prefill"] / total
        flash = prefill + span * planned["flash"] / total
        return {"prefill": prefill, "flash": flash, "decode": end}

    def skip(self, what: str, why: str) -> str:
        note = f"{what}: skipped by the time guard ({why})"
        self.skipped.append(note)
        log(note)
        return note
