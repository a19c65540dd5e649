"""Inference throughput of the default conv and lstm models, scores included.

Run: ``.venv/bin/python bench/bench_model.py [--threads 2] [--batch 4096] [--repeats 10]``.
Prints windows/s for B windows of T=60 steps, C=8 channels: the median over repeats, and the
best repeat (the figure least disturbed by other work on a shared machine).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from stream_ae.models import ModelConfig, build_model, window_errors


def windows_per_s(kind: str, batch: int, window: int, channels: int, repeats: int) -> tuple[float, float]:
    model = build_model(ModelConfig(kind=kind, n_channels=channels, window=window)).eval()
    x = torch.randn(batch, window, channels)  # (B, T, C)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):  # 2 warm-up runs
            t0 = time.perf_counter()
            score, channel_error = window_errors(x, model(x))
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return batch / statistics.median(times), batch / min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--window", type=int, default=60)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, B={a.batch} T={a.window} C={a.channels}")
    for kind in ("conv", "lstm"):
        median, best = windows_per_s(kind, a.batch, a.window, a.channels, a.repeats)
        print(f"{kind:5s} default config: {median:10,.0f} windows/s median, {best:10,.0f} best "
              f"(forward + window_errors, inference_mode)")


if __name__ == "__main__":
    main()
