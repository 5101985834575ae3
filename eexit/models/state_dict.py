"""What keeps a state_dict from loading into a model, as one report (used by MSDNet's official
loader and the application's checkpoints)."""
from __future__ import annotations

from typing import Callable, List, Mapping

import torch


def mismatch_report(expected: Mapping[str, torch.Tensor], state: Mapping[str, object],
                    optional: Callable[[str], bool] = lambda key: False, show: int = 5) -> List[str]:
    """Lines naming the missing keys (except ``optional`` ones), the unexpected keys and the shape
    mismatches of ``state`` against ``expected`` (a model's ``state_dict()``), the first ``show`` of
    each with expected / got shapes; empty when ``state`` loads."""
    def shape(t: object) -> str:
        return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__

    missing = [k for k in expected if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and
                  (not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(expected[k].shape))]
    lines = []
    for title, keys, describe in (
        ("missing keys", missing, lambda k: f"{k} (expected {shape(expected[k])})"),
        ("unexpected keys", unexpected, lambda k: f"{k} (got {shape(state[k])})"),
        ("shape mismatches", mismatched, lambda k: f"{k}: expected {shape(expected[k])}, got {shape(state[k])}"),
    ):
        if keys:
            first = f" (the first {show})" if len(keys) > show else ""
            lines.append(f"{len(keys)} {title}{first}: " + "; ".join(describe(k) for k in keys[:show]))
    return lines
