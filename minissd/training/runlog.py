"""The run log: metrics.jsonl records, the progress display, the per-class AP table.

metrics.jsonl holds one JSON object per line: a record per logged iteration (loss parts, lr,
images/s), per evaluation (split, mAP, per-class AP) and per time plan. NaN (the AP of a class
without ground truth) is written as null, so the file is strict JSON. It is the one file of a run
directory that grows by appending (a line at a time) instead of being replaced atomically: a kill can
cut its last line, which `read_jsonl` skips, and a resume rewrites it atomically (`truncate_jsonl`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import warnings

from ..fileio import write_text_atomic


def finite_or_none(value):
    """NaN and inf (e.g. the AP of a class without ground truth) become None, recursively."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_jsonl(path, record) -> None:
    """Append one record (NaN -> null) as a line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(finite_or_none(record), sort_keys=True) + "\n")


def read_jsonl(path) -> list:
    """All records of a jsonl file ([] if it does not exist); a line cut by a crash is skipped."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by a crash; the rest is still useful
    return out


def truncate_jsonl(path, iteration: int, drop_evaluations: bool = False) -> None:
    """On resume, drop records written after the checkpoint's ``iteration``, so the log matches the state.

    ``drop_evaluations``: also drop the evaluation records (those with a ``split``) of ``iteration``
    itself, when the state says they are to be redone (an interrupted validation, the final evaluation).
    The file is replaced atomically.
    """
    records = read_jsonl(path)
    keep = [r for r in records if r.get("iteration", 0) <= iteration
            and not (drop_evaluations and "split" in r and r.get("iteration") == iteration)]
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))


def format_ap_table(result: dict, class_names, title: str) -> str:
    """A per-class AP table: VOC07 11-point and all-point (area) AP."""
    ap07 = result["ap07"]
    ap_area = result.get("ap_area", {})
    npos = result.get("num_gt", {})
    width = max([len("class"), len("mean")] + [len(n) for n in class_names])
    lines = [title, f"  {'class':<{width}}  {'#gt':>6}  {'AP07':>6}  {'AP(area)':>8}"]
    for i, name in enumerate(class_names):
        label = i + 1
        a07 = ap07.get(label, float("nan"))
        aa = ap_area.get(label, float("nan"))
        lines.append(f"  {name:<{width}}  {npos.get(label, 0):>6}  {a07:>6.3f}  {aa:>8.3f}")
    lines.append(f"  {'mean':<{width}}  {sum(npos.values()) if npos else 0:>6}  "
                 f"{result['map07']:>6.3f}  {result.get('map_area', float('nan')):>8.3f}")
    return "\n".join(lines)


def result_json(result, class_names) -> dict:
    """The JSON summary of an evaluation: mAPs, per-class APs by class name, the image count."""
    return {
        "map07": result["map07"], "map_area": result["map_area"],
        "ap07": {class_names[k - 1]: v for k, v in sorted(result["ap07"].items())},
        "ap_area": {class_names[k - 1]: v for k, v in sorted(result["ap_area"].items())},
        "num_images": result["num_images"],
    }


class Progress:
    """A tqdm bar, or plain lines for log files, or nothing."""

    def __init__(self, mode: str, total: int, initial: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm  # optional dependency, only for the bar

            self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, smoothing=0.1,
                            desc="train")

    def update(self, n, postfix: dict | None, line_due: bool, iteration: int, total: int):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        elif self.mode == "lines" and line_due and postfix:
            parts = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"iter {iteration}/{total} {parts}", flush=True)

    def set_total(self, total: int):
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def write(self, msg: str, file=None):
        if self.bar is not None:
            self.bar.write(msg, file=file)
        else:   # messages (evaluations, the time plan) print in every mode; "none" only drops progress
            print(msg, file=file or sys.stdout, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# SIGTERM (kill, a batch scheduler's time limit, docker stop) is handled like Ctrl-C.
SIGNALS = (signal.SIGINT,) + ((signal.SIGTERM,) if hasattr(signal, "SIGTERM") else ())


class Interrupt:
    """First Ctrl-C (or SIGTERM) sets a flag the loop checks between iterations; a second one aborts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. called from a test runner thread)
                pass
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        what = "SIGTERM" if signum == getattr(signal, "SIGTERM", None) else "interrupt"
        print(f"\n{what}: finishing this step, then saving a checkpoint (Ctrl-C again to abort "
              "without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            if previous is not None:
                signal.signal(sig, previous)
        self._previous = {}
        return False


@contextlib.contextmanager
def one_line_warnings():
    """Within the block, a warning prints as ``warning: <message> (<Category>)``: one line, without
    the Python file, line number and source line the default format adds (commands use it)."""
    previous = warnings.formatwarning

    def _format(message, category, filename, lineno, line=None):
        return f"warning: {message} ({category.__name__})\n"

    warnings.formatwarning = _format
    try:
        yield
    finally:
        warnings.formatwarning = previous


def raise_keyboard_interrupt(signum, frame):
    """A signal handler: SIGTERM outside the training loop ends the command as Ctrl-C would."""
    raise KeyboardInterrupt
