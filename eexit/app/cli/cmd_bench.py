"""``eexit bench``: wall-clock of real early exit vs the full network vs the official-style simulation;
with ``--stream``, the streaming engine (:mod:`eexit.serve`) vs what a server would run instead."""
from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Dict, List

import torch

from eexit import timing
from eexit.app import checkpoint, zoo
from eexit.app.cli.common import (
    THRESHOLDS_FILE,
    HelpFormatter,
    add_subject_options,
    add_thresholds_options,
    common_options,
    load_subject,
    n_exits,
    operating_points,
    table,
    thresholds_lines,
)
from eexit.app.devices import resolve_device
from eexit.app.evaluation import batch_thresholds, check_exit_fractions, model_inputs, time_model
from eexit.serve_bench import contender_throughputs, stream_benchmark

HELP = "wall-clock table: real early exit vs the full network vs every exit for every sample"
#: options that time batches, and their defaults (an error with --stream)
BATCH_DEFAULTS: Dict[str, Any] = dict(reps=10, backends=["fused", "reference"], compile=False)
#: options of --stream, and their defaults (an error without it)
STREAM_DEFAULTS: Dict[str, Any] = dict(request_size=[1, 4, 16], stream_samples=4096, stream_rounds=3,
                                       contender_samples=512, clients=None, loads=[0.25, 0.5, 0.9], max_batch=256,
                                       max_wait_ms=5.0)
#: batch size of the offline infer contender (the stream's throughput ceiling)
OFFLINE_BATCH = 256


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", parents=[common_options()], help=HELP, formatter_class=HelpFormatter,
        description="Times, on one batch, the full network (every stage, last exit only), the official-style "
        "simulation (every exit computed for every sample) and real early exit (model.infer) at each operating "
        "point, in the fused and the reference backends: the fastest, median and slowest ms per batch of --reps "
        "interleaved runs (with a warning when the slowest took over 1.5x the fastest: a busy machine), "
        "samples per second and the speedup over the full network at the median, and torch's thread count. "
        "With --checkpoint the batch is taken from the test split; with --model alone the network has random "
        "weights and the batch is random. Operating points: --thresholds, and --exit-fractions (thresholds "
        f"calibrated on the timed batch itself, so that it needs no trained model); without either, those of "
        f"{THRESHOLDS_FILE}. Examples: eexit bench --checkpoint runs/msdnet.pt --batch-size 256; eexit bench "
        "--model msdnet-imagenet-step4 --device cuda --batch-size 64 --exit-fractions 0.4 0.3 0.2 0.05 0.05; "
        "eexit bench --model resnet18-exits --thresholds 0.9 0.9 0.9 0. With --stream it streams requests through "
        "the engine instead (see the streaming options); e.g. eexit bench --stream --model b-lenet --thresholds 0.5 0")
    add_subject_options(p, checkpoint_required=False,
                        batch="samples in the timed batch; with --stream, the pool the requests are cut from "
                        "(reused cyclically)")
    p.add_argument("--num-classes", type=int, default=10, help="classes of a --model without checkpoint")
    add_thresholds_options(p, "an operating point")
    p.add_argument("--exit-fractions", type=float, nargs="+", metavar="F",
                   help="an operating point whose thresholds send about these fractions of the timed batch to "
                   "each exit, calibrated on that batch (eexit.calibrate.budgeted_thresholds): one per exit, "
                   "the last exit's included, summing to 1 (e.g. 0.4 0.3 0.2 0.1 for four exits); with "
                   "--criterion")
    p.add_argument("--reps", type=int, default=BATCH_DEFAULTS["reps"],
                   help="timed runs of each (fastest, median and slowest reported)")
    p.add_argument("--backends", nargs="+", choices=["fused", "reference"], default=BATCH_DEFAULTS["backends"],
                   help="eexit backends to time")
    p.add_argument("--compile", action="store_true",
                   help="also time the model under eexit.compile (torch.compile per stage and exit, dynamic batch)")
    p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    g = p.add_argument_group(
        "streaming (--stream)",
        "Streams --stream-samples samples, in requests of each --request-size, through an "
        "eexit.serve.EarlyExitEngine at each operating point (pass --thresholds to stream one). Closed loop "
        "(--clients requests always outstanding: the engine's maximum throughput), timed in --stream-rounds rounds, "
        "each also timing on the stream's first --contender-samples samples what a server would run instead: "
        f"model.infer per request, the full network per request, and offline model.infer at batch {OFFLINE_BATCH} "
        "(the ceiling); the slowest, median and fastest samples/s, and the engine's median over each one's. Open "
        "loop: Poisson arrivals at each of --loads times the engine's median closed-loop throughput, latency p50 "
        "and p99 from each arrival against the bound --max-wait-ms + 3 x the median batch service time (the sum "
        "over stages of their median batch durations). With the mean batch per stage of the engine.")
    g.add_argument("--stream", action="store_true", help="benchmark the streaming engine instead of batches")
    g.add_argument("--request-size", type=int, nargs="+", default=STREAM_DEFAULTS["request_size"], metavar="R",
                   help="samples per request, one stream each")
    g.add_argument("--stream-samples", type=int, default=STREAM_DEFAULTS["stream_samples"], metavar="N",
                   help="samples in each stream")
    g.add_argument("--stream-rounds", type=int, default=STREAM_DEFAULTS["stream_rounds"], metavar="N",
                   help="closed-loop rounds (slowest, median and fastest reported)")
    g.add_argument("--contender-samples", type=int, default=STREAM_DEFAULTS["contender_samples"], metavar="N",
                   help="the contenders' throughput from the stream's first N samples (per-request runs are slow)")
    g.add_argument("--clients", type=int, metavar="C",
                   help="closed loop: requests kept outstanding (default: 2 x --max-batch / request size)")
    g.add_argument("--loads", type=float, nargs="*", default=STREAM_DEFAULTS["loads"], metavar="L",
                   help="open loop: arrival rates as fractions of the engine's maximum throughput (none: no open loop)")
    g.add_argument("--max-batch", type=int, default=STREAM_DEFAULTS["max_batch"],
                   help="engine: most samples in a stage's batch")
    g.add_argument("--max-wait-ms", type=float, default=STREAM_DEFAULTS["max_wait_ms"],
                   help="engine: longest a sample waits for its batch to fill, from its request's submission")
    p.set_defaults(run=run)


def fmt_ms(ms: float) -> str:
    return f"{ms:.3g}" if ms < 1 else f"{ms:.2f}"


def option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_mode_options(args: argparse.Namespace) -> None:
    """No option of the other mode (batches, or --stream) set, and --stream's options in range."""
    misplaced = [option(d) for d, v in (BATCH_DEFAULTS if args.stream else STREAM_DEFAULTS).items()
                 if getattr(args, d) != v]
    if misplaced:
        where = "batch timing only, not with --stream (its repetitions: --stream-rounds)" if args.stream \
            else "only with --stream"
        raise ValueError(f"{', '.join(misplaced)}: {where}")
    if not args.stream:
        return
    at_least_1 = [("request_size", v) for v in args.request_size] + [
        (d, getattr(args, d)) for d in ("stream_samples", "stream_rounds", "contender_samples", "clients", "max_batch")
        if getattr(args, d) is not None]
    for dest, value in at_least_1:
        if value < 1:
            raise ValueError(f"{option(dest)} must be >= 1, got {value}")
    for load in args.loads:
        if not 0 < load < math.inf:
            raise ValueError(f"--loads must be > 0 (fractions of the maximum throughput), got {load:g}")
    if not 0 <= args.max_wait_ms < math.inf:
        raise ValueError(f"--max-wait-ms must be a finite number >= 0, got {args.max_wait_ms:g}")


def run(args: argparse.Namespace) -> None:
    if args.reps < 1 or args.batch_size < 1:
        raise ValueError(f"--reps and --batch-size must be >= 1, got {args.reps} and {args.batch_size}")
    check_mode_options(args)
    if args.checkpoint is not None:
        subject = load_subject(args)
        model, name, device = subject.model, subject.name, subject.device
    else:
        if not args.model:
            raise ValueError("give --checkpoint, or --model for a network with random weights")
        if args.official or args.data or args.data_dir:
            raise ValueError("--official, --data and --data-dir go with --checkpoint; --model alone times a network "
                             "with random weights on a random batch")
        device = resolve_device(args.device)
        name = args.model
        torch.manual_seed(0)
        model = zoo.build(name, args.num_classes).to(device).eval()
    k = n_exits(model)
    fractions = None if args.exit_fractions is None else check_exit_fractions(args.exit_fractions, k)
    points = [(p["name"], p["thresholds"], p["criterion"])
              for p in operating_points(args, k, saved=args.thresholds is None and fractions is None)]
    if not points and fractions is None:
        raise ValueError("no operating point: pass --thresholds or --exit-fractions (or calibrate the checkpoint "
                         "first)")
    if len({c for _, _, c in points} | ({args.criterion} if fractions is not None else set())) > 1:
        raise ValueError("the operating points mix criteria; pass --thresholds with the file's criterion")
    if args.checkpoint is not None:
        test = subject.splits.test
        idx = torch.arange(args.batch_size) % len(test)
        x = torch.cat([b for b, _ in model_inputs(test, subject.spec, args.batch_size, device, indices=idx)])
        source = f"{args.batch_size} test samples" + (" (repeated)" if args.batch_size > len(test) else "")
    else:
        x = torch.randn(args.batch_size, *zoo.entry(name).input_shape, device=device)
        source = f"a random batch of {args.batch_size}, random weights"
    requested = {}
    if fractions is not None:  # thresholds calibrated on the timed batch itself
        requested["exit fractions " + " ".join(f"{f:g}" for f in fractions)] = fractions
        points.append((next(iter(requested)), batch_thresholds(model, x, fractions, args.criterion), args.criterion))
    with torch.inference_mode():
        measured = [torch.bincount(model.infer(x, t, c).exit_index, minlength=k).double().div(len(x)).tolist()
                    for _, t, c in points]
    if args.stream:
        return stream(args, model, name, device, x, source, points, measured)
    backends = list(args.backends) + (["compiled"] if args.compile else [])
    times = time_model(model, x, [t for _, t, _ in points], points[0][2], backends, args.reps)
    threads = torch.get_num_threads()
    print(f"{name} on {device}, {threads} torch thread{'s' if threads != 1 else ''}, {source}; {args.reps} "
          "interleaved runs of each: fastest, median and slowest ms per batch (samples/s and speedup at the median)")
    rows: List[List[str]] = []
    spreads: Dict[str, timing.Spread] = {}
    for backend, t in times.items():
        def row(what: str, s: Dict[str, float], extra: str = "") -> None:
            spreads[f"{what}, {backend}"] = timing.Spread(**s)
            rows.append([what, backend, fmt_ms(s["min_ms"]), fmt_ms(s["median_ms"]), fmt_ms(s["max_ms"]),
                         f"{len(x) / s['median_ms'] * 1e3:.0f}", f"{t['full_ms'] / s['median_ms']:.2f}x", extra])

        row("full network", t["spread"]["full"])
        row("every exit (simulation)", t["spread"]["simulate"])
        for (pname, _, _), s, frac in zip(points, t["spread"]["infer"], measured):
            row(f"infer @ {pname}", s, " ".join(f"{100 * f:.0f}" for f in frac))
    print(table(["run", "backend", "min ms", "median ms", "max ms", "samples/s", "vs full", "exit % per stage"],
                rows))
    if "compiled" in times:
        print(f"compiled: warm-up (eexit.compile) {times['compiled']['compile_s']:.1f} s")
    print(thresholds_lines([(n, t) for n, t, _ in points]))
    warning = timing.noisy_warning(spreads)
    if warning:
        print(f"eexit bench: warning: {warning}", file=sys.stderr)
    if args.json:
        checkpoint.save_json(dict(model=name, device=str(device), threads=threads, batch_size=len(x), reps=args.reps,
                                  points=[dict(name=n, thresholds=t, criterion=c, exit_fractions=f,
                                               **({"requested_exit_fractions": requested[n]} if n in requested
                                                  else {}))
                                          for (n, t, c), f in zip(points, measured)],
                                  times=times, noisy=warning), args.json)
        print(f"wrote {args.json}")


def fmt_count(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def fmt_batches(mean_batch) -> str:
    return " ".join(fmt_count(b) for b in mean_batch)


def stream_figures(args: argparse.Namespace, model, pool: torch.Tensor, thresholds: List[float], criterion: str,
                   size: int, spreads: Dict[str, timing.Spread], label: str) -> Dict[str, Any]:
    """Streams of requests of ``size`` at one operating point: the closed-loop rounds (the engine, then
    the contenders), then the open loop at each load; adds the closed-loop timings to ``spreads``."""
    n, n_contender = args.stream_samples, min(args.contender_samples, args.stream_samples)
    engine_options = dict(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    results, contenders = [], []
    for _ in range(args.stream_rounds):
        results.append(stream_benchmark(model, thresholds, criterion, pool, size, n, "closed", args.clients,
                                        **engine_options))
        contenders.append(contender_throughputs(model, thresholds, criterion, pool, size, n_contender,
                                                offline_batch=OFFLINE_BATCH))
    ms = {"engine": (n, [1e3 * r.seconds for r in results])}
    ms.update({k: (n_contender, [1e3 * n_contender / c[k] for c in contenders]) for k in contenders[0]})
    per_s = {}  # slowest, median and fastest samples/s
    for run_name, (count, times) in ms.items():
        spreads[f"{run_name}, request size {size}, {label}"] = s = timing.spread(times)
        per_s[run_name] = [1e3 * count / t for t in (s.max_ms, s.median_ms, s.min_ms)]
    peak = per_s["engine"][1]
    opened = []
    for load in args.loads:
        r = stream_benchmark(model, thresholds, criterion, pool, size, n, "open", load=load, max_throughput=peak,
                             **engine_options)
        opened.append(dict(load=load, offered=load * peak, throughput=r.throughput, p50_ms=r.p50_ms, p99_ms=r.p99_ms,
                           bound_ms=args.max_wait_ms + 3 * r.pass_ms, dropped=r.dropped,
                           mean_batch=r.stats.mean_batch))
    mid = sorted(results, key=lambda r: r.seconds)[len(results) // 2]
    return dict(request_size=size, clients=mid.clients, samples_per_s=per_s, mean_batch=mid.stats.mean_batch,
                open=opened)


def stream(args: argparse.Namespace, model, name: str, device: torch.device, pool: torch.Tensor, source: str,
           points: list, measured: List[List[float]]) -> None:
    """``eexit bench --stream``: a closed-loop and an open-loop table per operating point."""
    n_contender = min(args.contender_samples, args.stream_samples)
    offline = f"offline infer, batch {min(OFFLINE_BATCH, n_contender)}"
    threads = torch.get_num_threads()
    print(f"{name} on {device}, {threads} torch thread{'s' if threads != 1 else ''}, requests cut "
          f"cyclically from {source}; engine --max-batch {args.max_batch}, --max-wait-ms {args.max_wait_ms:g}")
    rounds = args.stream_rounds
    print(f"closed loop: streams of {args.stream_samples} samples, {rounds} round{'s' if rounds != 1 else ''}, each "
          f"also timing the contenders on the first {n_contender}: slowest, median and fastest samples/s, and the "
          "engine's median over the row's (engine / this)")
    spreads: Dict[str, timing.Spread] = {}
    figures = []
    for (pname, thresholds, criterion), frac in zip(points, measured):
        streams = [stream_figures(args, model, pool, thresholds, criterion, size, spreads, pname)
                   for size in args.request_size]
        figures.append(dict(name=pname, thresholds=thresholds, criterion=criterion, exit_fractions=frac,
                            streams=streams))
        closed, opened = [], []
        for f in streams:
            size, engine = str(f["request_size"]), f["samples_per_s"]["engine"][1]
            for run_name, v in f["samples_per_s"].items():
                first = run_name == "engine"
                label = f"engine, {f['clients']} clients" if first else offline if run_name == "offline infer" \
                    else run_name
                closed.append([size, label, *map(fmt_count, v), "" if first else f"{engine / v[1]:.2f}x",
                               fmt_batches(f["mean_batch"]) if first else ""])
            opened += [[size, f"{100 * o['load']:g}%", fmt_count(o["offered"]), fmt_count(o["throughput"]),
                        f"{o['p50_ms']:.2f}", f"{o['p99_ms']:.2f}", f"{o['bound_ms']:.2f}",
                        "yes" if o["p99_ms"] <= o["bound_ms"] else "no", str(o["dropped"]),
                        fmt_batches(o["mean_batch"])] for o in f["open"]]
        print(f"\noperating point {pname} (exit % per stage on the pool: {' '.join(f'{100 * x:.0f}' for x in frac)})")
        print(table(["request", "run", "min samples/s", "median samples/s", "max samples/s", "engine / this",
                     "mean batch per stage"], closed))
        if opened:
            print("open loop: Poisson arrivals at each load times the engine's median; latency from each arrival; "
                  "bound: --max-wait-ms + 3 x the median batch service time")
            print(table(["request", "load", "offered samples/s", "samples/s", "p50 ms", "p99 ms", "bound ms",
                         "p99 <= bound", "dropped", "mean batch per stage"], opened))
    print(thresholds_lines([(n, t) for n, t, _ in points]))
    warning = timing.noisy_warning(spreads)
    if warning:
        print(f"eexit bench: warning: {warning}", file=sys.stderr)
    if args.json:
        checkpoint.save_json(dict(model=name, device=str(device), threads=threads, pool=len(pool),
                                  **{d: getattr(args, d) for d in STREAM_DEFAULTS}, points=figures, noisy=warning),
                             args.json)
        print(f"wrote {args.json}")
