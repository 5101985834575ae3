"""eexit.ops.exit_gate against eexit.reference.exit_gate (and the reference against plain softmax)."""
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eexit import ops, reference

from helpers import DEVICES, DTYPES, SCORE_TOL, generator, new_seed, random_logits

CRITERIA = ["confidence", "entropy"]
INF, NAN = math.inf, math.nan


def check_decision(dec, logits, threshold, criterion, msg=""):
    """dec matches the reference: same pred, scores within tolerance, and a split that is
    exactly the op's own scores against the threshold and agrees with the reference's split
    on every row not within tolerance of the threshold."""
    ref = reference.exit_gate(logits.cpu(), threshold, criterion)
    n = logits.shape[0]
    tol = SCORE_TOL[logits.dtype]
    assert dec.pred.dtype == torch.int64 and dec.score.dtype == torch.float32, msg
    assert dec.exit_idx.dtype == torch.int64 and dec.keep_idx.dtype == torch.int64, msg
    assert dec.pred.shape == (n,) and dec.score.shape == (n,), msg
    assert dec.pred.device == logits.device and dec.exit_idx.device == logits.device, msg
    pred, score = dec.pred.cpu(), dec.score.cpu()
    exit_idx, keep_idx = dec.exit_idx.cpu(), dec.keep_idx.cpu()
    assert torch.equal(pred, ref.pred), f"{msg} pred differs at {(pred != ref.pred).nonzero().flatten()[:8]}"
    torch.testing.assert_close(score, ref.score, equal_nan=True, msg=lambda m: f"{msg} {m}", **tol)
    own = reference.exits(score, threshold, criterion)
    assert torch.equal(exit_idx, own.nonzero().flatten()), msg
    assert torch.equal(keep_idx, (~own).nonzero().flatten()), msg
    clear = (ref.score - threshold).abs() > tol["atol"] + tol["rtol"] * abs(threshold)
    ref_pass = reference.exits(ref.score, threshold, criterion)
    assert torch.equal(own[clear], ref_pass[clear]), msg


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("n", [0, 1, 7, 33, 1029])
@pytest.mark.parametrize("c", [1, 2, 10, 33, 100, 1000, 1001])
def test_matches_reference(device, dtype, criterion, n, c):
    seed = new_seed()
    gen = generator(seed)
    x = random_logits(n, c, dtype, device, gen)
    dec = ops.exit_gate(x, 0.0, criterion)  # scores first, then thresholds at and around them
    thresholds = [0.0, 0.5, 1.0] if criterion == "confidence" else [0.0, 0.5, math.log(c) + 1]
    if n:
        s = dec.score.cpu().sort().values
        for q in (0.25, 0.5, 0.9):
            v = s[int(q * (n - 1))].item()
            thresholds += [v, math.nextafter(v, INF), math.nextafter(v, -INF)]
    for thr in thresholds:
        if criterion == "confidence":
            thr = min(max(thr, 0.0), 1.0)
        thr = max(thr, 0.0)
        check_decision(ops.exit_gate(x, thr, criterion), x, thr, criterion, f"seed={seed} thr={thr}")


@pytest.mark.parametrize("device", DEVICES)
def test_threshold_at_a_score_is_inclusive_for_confidence_and_exclusive_for_entropy(device):
    gen = generator(new_seed())
    x = random_logits(64, 10, torch.float32, device, gen)
    for criterion in CRITERIA:
        score = ops.exit_gate(x, 0.0, criterion).score
        row = 17
        dec = ops.exit_gate(x, score[row].item(), criterion)
        assert (row in dec.exit_idx.tolist()) == (criterion == "confidence")


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 70),
    c=st.integers(1, 70),
    dtype=st.sampled_from(DTYPES),
    criterion=st.sampled_from(CRITERIA),
    temperature=st.floats(0.01, 30.0),
    q=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_against_reference(n, c, dtype, criterion, temperature, q, seed):
    x = (torch.randn(n, c, generator=generator(seed)) * temperature).to(dtype)
    thr = q if criterion == "confidence" else q * math.log(c + 1)
    check_decision(ops.exit_gate(x, thr, criterion), x, thr, criterion, f"seed={seed}")


def test_reference_matches_plain_softmax():
    gen = generator(seed := new_seed())
    x = random_logits(300, 57, torch.float64, "cpu", gen)
    p = torch.softmax(x, 1)
    conf = p.max(1).values
    ent = -(p * torch.log(p)).sum(1)
    torch.testing.assert_close(reference.exit_gate(x.float(), 0.5).score.double(), conf, atol=1e-6, rtol=1e-5,
                               msg=lambda m: f"seed={seed} {m}")
    torch.testing.assert_close(reference.exit_gate(x.float(), 1.0, "entropy").score.double(), ent, atol=1e-5,
                               rtol=1e-5, msg=lambda m: f"seed={seed} {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_non_contiguous_inputs(device, dtype, criterion):
    seed = new_seed()
    gen = generator(seed)
    base = random_logits(40, 66, dtype, device, gen)
    views = {
        "transposed": base.t().contiguous().t(),  # column-major: stride(1) != 1
        "column_step": base[:, ::3],
        "row_step": base[::3],
        "both": base[1::2, 5::2],
        "expanded": base[:1].expand(9, -1),
    }
    for name, x in views.items():
        assert not x.is_contiguous()
        check_decision(ops.exit_gate(x, 0.4, criterion), x, 0.4, criterion, f"{name} seed={seed}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [5, 40, 5000])  # small path, row path, several row tiles
def test_non_finite_rows(device, dtype, c):
    x = torch.randn(9, c)
    x[0] = -INF  # all -inf: uniform over every class
    x[1, c // 2] = INF  # one +inf: one-hot
    x[2, 1], x[2, c - 1] = INF, INF  # two +inf: uniform over them
    x[3, c - 1] = NAN  # NaN late in the row
    x[4, 0], x[4, 2] = NAN, INF  # NaN before +inf
    x[5, 1:] = -INF  # one finite value, the rest -inf
    x[6] = 0.0  # ties everywhere
    x[7, 3], x[7, c - 2] = NAN, NAN  # several NaN: pred is the first
    x[8, 2:] = INF  # many +inf
    x = x.to(dtype=dtype, device=device)
    log = math.log
    expected = {  # row: (pred, confidence, entropy)
        0: (0, 1 / c, log(c)),
        1: (c // 2, 1.0, 0.0),
        2: (1, 0.5, log(2)),
        3: (c - 1, NAN, NAN),
        4: (0, NAN, NAN),
        5: (0, 1.0, 0.0),
        6: (0, 1 / c, log(c)),
        7: (3, NAN, NAN),
        8: (2, 1 / (c - 2), log(c - 2)),
    }
    for criterion, col in (("confidence", 1), ("entropy", 2)):
        dec = ops.exit_gate(x, 0.0, criterion)
        for row, exp in expected.items():
            assert dec.pred[row].item() == exp[0], (criterion, row)
            got = dec.score[row].item()
            if math.isnan(exp[col]):
                assert math.isnan(got), (criterion, row, got)
            else:
                assert got == pytest.approx(exp[col], abs=2e-5), (criterion, row, got)
        check_decision(dec, x, 0.0, criterion)
        # NaN rows never exit, whatever the threshold
        nan_rows = {3, 4, 7}
        for thr in ((0.0, 1.0) if criterion == "confidence" else (0.0, 1e30)):
            assert not nan_rows & set(ops.exit_gate(x, thr, criterion).exit_idx.tolist())
        assert nan_rows <= set(ops.exit_gate(x, 0.0, criterion).keep_idx.tolist())


def range_edge_logits(n, c, dtype, device, gen):
    """Logits [n, c] (n >= 8) whose scores sit at the ends of their ranges, where rounding could push
    a confidence above 1 or an entropy below 0, and the rows at exactly 1 / 0 (returned as a list):
    random rows at temperatures 1e-4 to 1e3; every 4th row one logit 200 above the rest; row 1 one
    +inf; row 2 one finite value, the rest -inf; row 3 a NaN."""
    x = torch.randn(n, c, generator=gen) * 10.0 ** torch.randint(-4, 4, (n, 1), generator=gen)
    dominant = torch.arange(0, n, 4)
    x[dominant, torch.randint(0, c, (len(dominant),), generator=gen)] = x[dominant].amax(1) + 200
    x[1, -1] = INF
    x[2, 1:] = -INF
    x[3, 0] = NAN
    at_end = [r for r in range(n) if r != 3] if c == 1 else sorted(set(dominant.tolist()) | {1, 2})
    return x.to(dtype=dtype, device=device), at_end


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [1, 3, 40, 5000])  # small path, row path, several row tiles
def test_scores_are_clamped_to_their_ranges(device, dtype, c):
    """Confidence never exceeds 1 and entropy is never negative, fused and reference alike; the rows
    at the ends score 1 / ~0 on both, so a confidence threshold of 1 takes them."""
    gen = generator(seed := new_seed())
    x, at_end = range_edge_logits(67, c, dtype, device, gen)
    finite = torch.arange(67) != 3
    for name, fn in (("fused", ops.exit_gate), ("reference", reference.exit_gate)):
        msg = f"{name} seed={seed}"
        dec = fn(x, 1.0, "confidence")
        conf, ent = dec.score.cpu(), fn(x, 0.0, "entropy").score.cpu()
        assert torch.equal(conf.isnan(), ~finite) and torch.equal(ent.isnan(), ~finite), msg
        assert (conf[finite] <= 1.0).all() and (conf[finite] > 0.0).all(), f"{msg} max {conf[finite].max()}"
        assert (ent[finite] >= 0.0).all(), f"{msg} min entropy {ent[finite].min()}"
        assert (conf[at_end] == 1.0).all() and (ent[at_end] < 1e-30).all(), msg
        assert set(at_end) <= set(dec.exit_idx.tolist()), msg
    for criterion, thr in (("confidence", 1.0), ("entropy", 0.0)):
        check_decision(ops.exit_gate(x, thr, criterion), x, thr, criterion, f"seed={seed}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [1, 3, 40, 5000])
def test_entropy_threshold_zero_lets_nothing_exit(device, dtype, c):
    """entropy < 0 is never true: with threshold 0 every row stays, the one-hot rows of entropy
    exactly 0 included, in the fused op and in the reference."""
    gen = generator(seed := new_seed())
    x, _ = range_edge_logits(67, c, dtype, device, gen)
    for name, fn in (("fused", ops.exit_gate), ("reference", reference.exit_gate)):
        dec = fn(x, 0.0, "entropy")
        assert dec.exit_idx.numel() == 0, f"{name} seed={seed} exits {dec.exit_idx.tolist()}"
        assert torch.equal(dec.keep_idx.cpu(), torch.arange(67)), f"{name} seed={seed}"
        assert not reference.exits(dec.score, 0.0, "entropy").any(), f"{name} seed={seed}"


@pytest.mark.parametrize("device", DEVICES)
def test_multi_tile_rows_rescale(device):
    """Rows longer than the CPU tile, with the max in a later tile, match the reference."""
    gen = generator(seed := new_seed())
    x = torch.randn(6, 7000, generator=gen)
    x[0, 6500] = 40.0
    x[1, 2048] = 12.0
    x[2, :3000] -= 50.0
    x[3, 4095], x[3, 4096] = 9.0, 9.0
    x = x.to(device)
    for criterion in CRITERIA:
        check_decision(ops.exit_gate(x, 0.3, criterion), x, 0.3, criterion, f"seed={seed}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_batch_invariance(device, criterion):
    gen = generator(seed := new_seed())
    x = random_logits(50, 37, torch.float32, device, gen)
    whole = ops.exit_gate(x, 0.6, criterion)
    for i in range(x.shape[0]):
        one = ops.exit_gate(x[i : i + 1], 0.6, criterion)
        assert one.pred.item() == whole.pred[i].item(), f"seed={seed} row={i}"
        assert one.score.item() == whole.score[i].item(), f"seed={seed} row={i}"


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    for criterion in CRITERIA:
        for fn in (ops.exit_gate, reference.exit_gate):
            dec = fn(torch.empty(0, 10, device=device), 0.5, criterion)
            for t in dec:
                assert t.shape == (0,) and t.device.type == device


BAD_INPUTS = [
    (lambda: torch.randn(5), 0.5, "confidence", ValueError, "rank 2"),
    (lambda: torch.randn(2, 3, 4), 0.5, "confidence", ValueError, "rank 2"),
    (lambda: torch.randn(4, 0), 0.5, "confidence", ValueError, "at least one class"),
    (lambda: torch.randn(4, 3).double(), 0.5, "confidence", TypeError, "float32, float16 or bfloat16"),
    (lambda: torch.randint(0, 5, (4, 3)), 0.5, "confidence", TypeError, "float32, float16 or bfloat16"),
    (lambda: torch.randn(4, 3), -0.1, "confidence", ValueError, "in \\[0, 1\\]"),
    (lambda: torch.randn(4, 3), 1.5, "confidence", ValueError, "in \\[0, 1\\]"),
    (lambda: torch.randn(4, 3), NAN, "confidence", ValueError, "in \\[0, 1\\]"),
    (lambda: torch.randn(4, 3), -1.0, "entropy", ValueError, ">= 0"),
    (lambda: torch.randn(4, 3), NAN, "entropy", ValueError, ">= 0"),
    (lambda: torch.randn(4, 3), 0.5, "margin", ValueError, "criterion"),
    (lambda: torch.randn(4, 3), 0.5, 3, TypeError, "criterion"),
    (lambda: torch.randn(4, 3), "0.5", "confidence", TypeError, "threshold"),
    (lambda: torch.randn(4, 3), True, "confidence", TypeError, "threshold"),
    (lambda: torch.randn(4, 3), torch.ones(2), "confidence", TypeError, "threshold"),
    (lambda: [[1.0, 2.0]], 0.5, "confidence", TypeError, "logits"),
]


@pytest.mark.parametrize("fn", [ops.exit_gate, reference.exit_gate], ids=["fused", "reference"])
@pytest.mark.parametrize("make,thr,criterion,exc,match", BAD_INPUTS)
def test_bad_input(fn, make, thr, criterion, exc, match):
    with pytest.raises(exc, match=match):
        fn(make(), thr, criterion)


@pytest.mark.parametrize("make,thr,criterion,exc,match",
                         [b for b in BAD_INPUTS if b[3] is ValueError or "float32" in b[4]])
def test_bad_input_raw_op(make, thr, criterion, exc, match):
    """The C++ checks raise the same types as the Python ones."""
    with pytest.raises(exc, match=match):
        torch.ops.eexit.exit_gate(make(), thr, criterion)


def test_tensor_threshold_is_accepted():
    x = torch.randn(8, 4)
    a = ops.exit_gate(x, torch.tensor(0.5), "confidence")
    b = ops.exit_gate(x, 0.5, "confidence")
    assert torch.equal(a.exit_idx, b.exit_idx)


def test_refuses_grad():
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        ops.exit_gate(x, 0.5)
    with torch.no_grad():
        assert ops.exit_gate(x, 0.5).pred.shape == (4,)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT", reason="CPU has no vector ISA to disable")
def test_portable_cpu_kernel_matches_reference():
    """ATEN_CPU_CAPABILITY=default selects the portable (non-AVX2) row kernel."""
    script = r"""
import math, torch
assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
from eexit import ops, reference
g = torch.Generator().manual_seed(SEED)
for c in (3, 40, 3000):
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        x = (torch.randn(37, c, generator=g) * 4).to(dt)
        x[0, 1] = math.inf; x[1] = -math.inf; x[2, c - 1] = math.nan
        for crit in ("confidence", "entropy"):
            a, b = ops.exit_gate(x, 0.0, crit), reference.exit_gate(x, 0.0, crit)
            assert torch.equal(a.pred, b.pred), (c, dt, crit)
            torch.testing.assert_close(a.score, b.score, atol=2e-5, rtol=2e-5, equal_nan=True)
print("ok")
""".replace("SEED", str(new_seed()))
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
