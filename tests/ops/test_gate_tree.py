"""The CUDA exit gate's reduction tree, without a GPU: csrc/cuda/gate_row.h (the per-row arithmetic
exit_gate.cu runs) built for the host with its warp / block merge order emulated lane by lane
(gate_tree_host.cpp), against eexit.reference on edge rows: ties across lanes, +inf, all -inf, NaN
with +inf, C = 1..129 and the block path. A change to the tree or to the row arithmetic shows here.

pred and the non-finite rows' scores must match exactly; finite scores to a few ulps (nvcc may
contract a * b + c into an FMA where the host build does not, and the summation order is not
the reference's).
"""
import math
import os
import shutil
import subprocess

import pytest
import torch

from eexit import reference

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "..", "..", "csrc")
WARP, BLOCK = 32, 256  # kWarp, kBlockRowThreads (checked against gate_row.h below)
INF, NAN = math.inf, math.nan


@pytest.fixture(scope="module")
def gate_tree(tmp_path_factory):
    """Runs rows [list of float lists] through the host build: (scores float32 [N], preds int64 [N])."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path_factory.mktemp("gate_tree") / "gate_tree"
    subprocess.run([cxx, "-std=c++17", "-O2", "-I", CSRC, os.path.join(HERE, "gate_tree_host.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)

    def run(rows, criterion, lanes):
        text = f"{int(criterion == 'entropy')} {lanes}\n" + "\n".join(
            f"{len(r)} " + " ".join(float(v).hex() if math.isfinite(v) else str(v) for v in r) for r in rows)
        out = subprocess.run([str(exe)], input=text, check=True, capture_output=True, text=True).stdout.split("\n")
        pairs = [line.split() for line in out if line]
        assert len(pairs) == len(rows)
        return (torch.tensor([float.fromhex(s) if "nan" not in s and "inf" not in s else float(s) for s, _ in pairs],
                             dtype=torch.float32),
                torch.tensor([int(p) for _, p in pairs]))

    return run


def _edge_rows():
    g = torch.Generator().manual_seed(0)
    rows = []
    for c in list(range(1, 34)) + [47, 63, 64, 65, 96, 127, 128, 129]:
        rows.append((torch.randn(c, generator=g) * 4).tolist())
    base = (torch.randn(129, generator=g)).tolist()
    for a, b in [(3, 35), (0, 32), (31, 64), (5, 100), (128, 1)]:  # ties for the max in different lanes
        r = list(base)
        r[a] = r[b] = 9.0
        rows.append(r)
    rows.append([2.0] * 129)  # all equal: a tie in every lane
    for c in (1, 2, 33, 129):
        rows.append([-INF] * c)  # all -inf: uniform
        r = [0.5] * c
        r[-1] = INF  # one +inf
        rows.append(r)
    r = list(base)
    r[7], r[40], r[100] = INF, INF, -INF  # two +inf in different lanes
    rows.append(r)
    r = list(base)
    r[10], r[70] = INF, NAN  # NaN with +inf: NaN wins, pred = the NaN
    rows.append(r)
    r = list(base)
    r[90], r[20] = NAN, NAN  # two NaN: pred = the first
    rows.append(r)
    rows.append([NAN] + [-INF] * 40)
    rows.append([-INF] * 40 + [3.0])  # -inf before the only finite entry
    r = list(base)
    r[2], r[60] = -INF, -1e30  # huge negative logits: terms clamp at kMinExp, never NaN
    rows.append(r)
    rows.append([88.0, -88.0, 0.0] * 43)  # wide range: every rescale path
    rows.append([float(i) for i in range(129)])  # increasing: a new max at every add
    rows.append([float(-i) for i in range(129)])
    return rows


def _compare(rows, criterion, scores, preds):
    for i, r in enumerate(rows):
        z = torch.tensor([r], dtype=torch.float32)
        want = reference.gate_scores(z, criterion)[0]
        assert preds[i].item() == torch.argmax(z, dim=1).item(), (i, r[:8])
        if not torch.isfinite(want) or not torch.isfinite(scores[i]):
            same = (torch.isnan(want) and torch.isnan(scores[i])) or want.item() == scores[i].item()
            assert same, (i, want, scores[i])
        else:
            torch.testing.assert_close(scores[i], want, rtol=4e-6, atol=2e-6, msg=f"row {i}: {r[:8]}")


def test_constants_match_the_header():
    text = open(os.path.join(CSRC, "cuda", "gate_row.h")).read()
    assert f"constexpr int kWarp = {WARP};" in text
    assert f"constexpr int kBlockRowThreads = {BLOCK};" in text


@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
@pytest.mark.parametrize("lanes", [WARP, BLOCK])
def test_tree_matches_reference_on_edge_rows(gate_tree, criterion, lanes):
    rows = _edge_rows()
    scores, preds = gate_tree(rows, criterion, lanes)
    _compare(rows, criterion, scores, preds)


@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
def test_block_path_on_large_rows(gate_tree, criterion):
    """C >= kLargeC (4096) runs on a block: every lane holds 16+ logits."""
    g = torch.Generator().manual_seed(1)
    rows = [(torch.randn(4096, generator=g) * 3).tolist(), (torch.randn(5000, generator=g)).tolist()]
    rows[1][4999] = INF
    rows.append([0.0] * 4100)
    rows[2][4097] = 1.0
    scores, preds = gate_tree(rows, criterion, BLOCK)
    _compare(rows, criterion, scores, preds)


def test_exit_decisions_match_reference(gate_tree):
    """Thresholds off the scores by more than the tolerance: every decision as the reference's."""
    rows = _edge_rows()
    for criterion, thr in [("confidence", 0.5), ("entropy", 1.0), ("entropy", 0.0)]:
        scores, _ = gate_tree(rows, criterion, WARP)
        z = [torch.tensor([r], dtype=torch.float32) for r in rows]
        want = torch.cat([reference.gate_scores(t, criterion) for t in z])
        clear = ~torch.isclose(want, torch.tensor(thr), rtol=1e-5, atol=1e-6)
        assert torch.equal(reference.exits(scores, thr, criterion)[clear], reference.exits(want, thr, criterion)[clear])
