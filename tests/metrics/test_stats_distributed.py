"""``FeatureStats.all_reduce`` across two real processes (torch.distributed, gloo backend)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hf_cxr_diffusion.metrics.stats import FeatureStats

DIM = 6
#: unequal shard sizes, so a mean of per-rank means (instead of summed counts) would be caught
SHARDS = (5, 9)


def _features() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(sum(SHARDS), DIM)) * np.arange(1, DIM + 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, output_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        start = sum(SHARDS[:rank])
        shard = _features()[start : start + SHARDS[rank]]
        stats = FeatureStats(DIM).update(shard[:2]).update(shard[2:])  # two batches per rank
        stats.all_reduce()
        np.savez(Path(output_dir) / f"rank{rank}.npz", n=stats.n, mean=stats.mean, cov=stats.covariance)
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_two_processes_equals_one_shot_stats(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(len(SHARDS), _free_port(), str(tmp_path)), nprocs=len(SHARDS), join=True)
    feats = _features()
    for rank in range(len(SHARDS)):
        with np.load(tmp_path / f"rank{rank}.npz") as got:
            assert int(got["n"]) == len(feats)
            np.testing.assert_allclose(got["mean"], feats.mean(0), rtol=0, atol=1e-10)
            np.testing.assert_allclose(got["cov"], np.cov(feats, rowvar=False), rtol=0, atol=1e-10)


def test_all_reduce_without_distributed_is_a_no_op() -> None:
    assert not (dist.is_available() and dist.is_initialized())
    feats = _features()
    stats = FeatureStats(DIM).update(torch.as_tensor(feats)).all_reduce()
    assert stats.n == len(feats)
    np.testing.assert_allclose(stats.mean, feats.mean(0), rtol=0, atol=1e-12)
