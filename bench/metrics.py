"""Benchmark ``hf_cxr_diffusion.metrics`` against the reference packages, in one run, one table.

Rows (each timed best of ``--repeat``, implementations interleaved within every repeat, one BLAS thread, without
tracemalloc; the peak traced memory comes from one more, traced call per implementation):

- FID end to end from features (statistics of both sets + distance) at d = 1024 / 2048, n = 5k / 50k:
  ours (streamed ``FeatureStats`` in batches of 1,000 + symmetric eigen form) vs pytorch-fid
  (``np.mean``/``np.cov`` + ``calculate_frechet_distance``) vs torchmetrics (``FrechetInceptionDistance``
  with an identity feature module) vs clean-fid (``np.mean``/``np.cov`` + ``fid.frechet_distance``);
- Vendi (q = 1) at n = 25,133 and 100,000 (d = 1024): ours vs vendi-score's ``score_dual``, with the
  relative difference to a float64 reference and the peak traced memory;
- memorisation at n_train = 10,000 and 100,000 (200 synthetic, 100 held-out real): peak traced memory
  of the streaming check (training rows fed in batches of 1,000);
- the xrv-fid-v1 / xrv-fid-v2 offset: FID between the same 64 phantoms under both protocols, next to the
  FID between two phantom sets (random DenseNet weights: no real weights can be had offline).

Ratios are against the row's reference implementation in the same run. Features are synthetic
(non-negative, correlated, like pooled ReLU activations), not images. Run:
``python bench/metrics.py [--repeat 3] [--quick] [--json results.json]`` (``--json`` also writes the rows as JSON).
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import torch

from hf_cxr_diffusion.io import write_json_atomic


def features(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(d, 64)) / 8
    out = np.empty((n, d), np.float32)
    for start in range(0, n, 5000):
        m = min(5000, n - start)
        out[start : start + m] = np.maximum(rng.normal(size=(m, 64)) @ base.T + rng.normal(size=(m, d)) * 0.3, 0)
    return out


def fid_impls(d: int) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    from cleanfid import fid as cleanfid
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torchmetrics.image.fid import FrechetInceptionDistance

    from hf_cxr_diffusion.metrics import FeatureStats, fid_from_stats

    def ours(a: np.ndarray, b: np.ndarray) -> float:
        sa, sb = FeatureStats(d), FeatureStats(d)
        for start in range(0, len(a), 1000):
            sa.update(a[start : start + 1000])
            sb.update(b[start : start + 1000])
        return fid_from_stats(sa, sb)

    def pytorch_fid(a: np.ndarray, b: np.ndarray) -> float:
        return float(calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))

    def clean_fid(a: np.ndarray, b: np.ndarray) -> float:
        return float(cleanfid.frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))

    class Identity(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    def torchmetrics(a: np.ndarray, b: np.ndarray) -> float:
        metric = FrechetInceptionDistance(feature=Identity(), input_img_size=(d,), normalize=True)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        for start in range(0, len(a), 1000):
            metric.update(ta[start : start + 1000], real=True)
            metric.update(tb[start : start + 1000], real=False)
        return float(metric.compute())

    return {"ours": ours, "pytorch-fid": pytorch_fid, "torchmetrics": torchmetrics, "clean-fid": clean_fid}


def best_of(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, tuple[float, object, float]]:
    """Interleaved: every repeat runs every implementation once, untraced; best time, its value and peak traced MiB.

    The peak comes from one more call per implementation under tracemalloc, apart from the timed calls: its
    per-allocation hooks would bias the times (ours and the references' alike)."""
    best: dict[str, tuple[float, object]] = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            value = fn()
            seconds = time.perf_counter() - start
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, value)
    peaks = {}
    for name, fn in fns.items():
        tracemalloc.start()
        fn()
        peaks[name] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return {name: (*best[name], peaks[name]) for name in fns}


#: every printed table row, for ``--json``
ROWS: list[dict[str, object]] = []


def emit(case: str, name: str, seconds: float, ratio: float | None, peak: float | None, note: str) -> None:
    """Print one table row and keep it for the JSON output."""
    ROWS.append({"case": case, "implementation": name, "seconds": seconds, "ratio": ratio, "peak_mib": peak, "note": note})
    cells = [case, name, f"{seconds:.3f}", "" if ratio is None else f"{ratio:.2f}x", "" if peak is None else f"{peak:,.0f}", note]
    print("| " + " | ".join(cells) + " |")


def row(label: str, name: str, result: tuple[float, object, float], base: float, note: str) -> None:
    seconds, _, peak = result
    emit(label, name, seconds, seconds / base, peak, note)


def bench_fid(sizes: list[tuple[int, int]], repeat: int) -> None:
    for n, d in sizes:
        a, b = features(n, d, 1), features(n, d, 2) * 1.05
        impls = fid_impls(d)
        res = best_of({k: (lambda f=f: f(a, b)) for k, f in impls.items()}, repeat)
        ref = res["pytorch-fid"]
        for name, r in res.items():
            rel = abs(float(r[1]) - float(ref[1])) / float(ref[1])
            row(f"FID n={n:,} d={d}", name, r, ref[0], f"FID {float(r[1]):.6f}; vs pytorch-fid {rel:.1e}")


def bench_stats(sizes: list[tuple[int, int]], repeat: int) -> None:
    """The statistics step alone: streamed FeatureStats (batches of 1,000) vs np.mean + np.cov of the whole array."""
    from hf_cxr_diffusion.metrics import FeatureStats

    for n, d in sizes:
        a = features(n, d, 1)

        def ours() -> float:
            stats = FeatureStats(d)
            for start in range(0, n, 1000):
                stats.update(a[start : start + 1000])
            return float(stats.covariance.trace())

        res = best_of({"ours (FeatureStats, streamed)": ours, "np.mean + np.cov": lambda: float(np.cov(a, rowvar=False).trace())},
                      repeat)
        ref = res["np.mean + np.cov"]
        for name, r in res.items():
            row(f"statistics n={n:,} d={d}", name, r, ref[0], f"trace {float(r[1]):.6f}")


def bench_vendi(ns: list[int], repeat: int) -> None:
    from vendi_score import vendi

    from hf_cxr_diffusion.metrics import vendi_score

    for n in ns:
        x = features(n, 1024, 3)
        exact = vendi_score(x, 1.0, exact=True)
        res = best_of({"ours": lambda: vendi_score(x, 1.0), "vendi-score score_dual": lambda: float(vendi.score_dual(x, q=1))},
                      repeat)
        ref = res["vendi-score score_dual"]
        for name, r in res.items():
            row(f"Vendi q=1 n={n:,} d=1024", name, r, ref[0],
                f"score {float(r[1]):.8f}; rel. error vs float64 {abs(float(r[1]) - exact) / exact:.1e}")


def bench_memorisation(n_trains: list[int], repeat: int) -> None:
    from hf_cxr_diffusion.metrics import Context, Memorisation
    from hf_cxr_diffusion.metrics.base import Batch

    syn, held_out = torch.from_numpy(features(200, 1024, 4)), torch.from_numpy(features(100, 1024, 5))

    def run(n_train: int) -> float:
        metric = Memorisation(Context(1024, "bench", "bench"))
        try:
            for start in range(0, n_train, 1000):  # training rows arrive batch by batch, as from the feature model
                metric.update(Batch("training", torch.from_numpy(features(min(1000, n_train - start), 1024, 10 + start))))
            metric.update(Batch("synthetic", syn))
            metric.update(Batch("real", held_out))
            return metric.compute()["threshold"]
        finally:
            metric.close()

    res = best_of({f"n_train={n:,}": (lambda n=n: run(n)) for n in n_trains}, repeat)
    base = next(iter(res.values()))
    for name, r in res.items():
        emit(f"memorisation {name}", "ours (streamed, chunked)", r[0], r[0] / base[0], r[2],
             f"peak memory {r[2] / base[2]:.2f}x of the smallest; threshold {float(r[1]):.4f}")


def bench_protocol_offset(n: int, resolution: int) -> None:
    """The same phantoms under xrv-fid-v1 and xrv-fid-v2: FID between the two, next to FID between two phantom sets."""
    from hf_cxr_diffusion.metrics import XRVFeatureExtractor, fid_from_features, get_protocol
    from hf_cxr_diffusion.phantoms.draw import draw_phantom, sample_params

    a = [draw_phantom(sample_params(s, s), None, resolution) for s in range(n)]
    b = [draw_phantom(sample_params(1000 + s, 1000 + s), None, resolution) for s in range(n)]
    start = time.perf_counter()
    feats = {}
    for pid in ("xrv-fid-v1", "xrv-fid-v2"):
        model = XRVFeatureExtractor(allow_random_weights=True, protocol=get_protocol(pid), batch_size=16)
        feats[pid] = (model.features(a), model.features(b))
    seconds = time.perf_counter() - start
    offset = fid_from_features(feats["xrv-fid-v1"][0], feats["xrv-fid-v2"][0])
    between = fid_from_features(feats["xrv-fid-v2"][0], feats["xrv-fid-v2"][1])
    mean_part = float(np.sum((feats["xrv-fid-v1"][0].mean(0) - feats["xrv-fid-v2"][0].mean(0)) ** 2))
    emit(f"protocol offset, {n} phantoms {resolution} px", "random DenseNet (no real weights offline)", seconds, None, None,
         f"FID(v1, v2 of the same images) {offset:,.1f} = {100 * offset / between:.1f}% of FID(set A, set B under v2) "
         f"{between:,.1f}; {100 * mean_part / offset:.0f}% of it a mean shift")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="only the small sizes (n = 5k FID, 25,133 Vendi, 10k/20k memorisation)")
    parser.add_argument("--json", type=str, default=None, help="also write the rows (and load averages) to this JSON file")
    args = parser.parse_args()
    load_start = os.getloadavg()
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    print(f"load average at start: {os.getloadavg()}, cpus: {os.cpu_count()}, one BLAS / torch thread, best of {args.repeat}")
    print("\n| case | implementation | time (s) | ratio vs reference | peak traced MiB | note |")
    print("|---|---|---:|---:|---:|---|")
    sizes = [(5000, 1024), (5000, 2048)] + ([] if args.quick else [(50_000, 1024), (50_000, 2048)])
    with threadpool_limits(limits=1):
        bench_stats(sizes[:2], args.repeat)
        bench_fid(sizes, args.repeat)
        bench_vendi([25_133] + ([] if args.quick else [100_000]), args.repeat)
        bench_memorisation([10_000, 20_000] if args.quick else [10_000, 100_000], args.repeat)
        bench_protocol_offset(64, 256)
    print(f"\nload average at end: {os.getloadavg()}")
    if args.json:
        write_json_atomic(args.json, {"load_average_start": load_start, "load_average_end": os.getloadavg(),
                                      "repeat": args.repeat, "quick": args.quick, "rows": ROWS})


if __name__ == "__main__":
    main()
