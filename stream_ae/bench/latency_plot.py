"""The picture of ``stream-ae bench stream`` (c): every alert's latency over the paced run,
against the broker floor and the target, above the cores the machine, the embedded broker and
the load generator used meanwhile. A p99 is one number; the picture shows when the slow
events came and what the machine was doing then."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def plot_latency(path: Path, alerts: dict, floor: dict, target_ms: float, title: str) -> Path:
    """``alerts``: {"sent_s", "ms", "cores": {"t_s", "machine", "broker", "load_generator"}}
    from ``latency_run``; ``floor``: {"t_s", "p50", "p99"} from ``broker_latency_run``. Times
    are seconds after each run's first paced send."""
    from stream_ae.figures import figure, save

    fig = figure(figsize=(13, 6.5), layout="constrained")
    ax_lat, ax_cpu = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    sent, ms = np.asarray(alerts["sent_s"]), np.asarray(alerts["ms"])
    over = ms > target_ms
    ax_lat.scatter(sent[~over], ms[~over], s=6, color="tab:blue", label=f"alert event ({int((~over).sum())})")
    ax_lat.scatter(sent[over], ms[over], s=8, color="tab:red", label=f"alert event over the target ({int(over.sum())})")
    if ms.size:
        ax_lat.axhline(np.percentile(ms, 99), color="tab:blue", lw=0.8, ls="--",
                       label=f"alerts p99 {np.percentile(ms, 99):.0f} ms")
    ax_lat.axhline(target_ms, color="tab:red", lw=0.8, label=f"target p99 {target_ms:.0f} ms")
    ax_lat.plot(floor["t_s"], floor["p99"], color="0.35", lw=1.0, label="broker floor p99 per 0.5 s (bare consumer)")
    ax_lat.plot(floor["t_s"], floor["p50"], color="0.6", lw=1.0, label="broker floor p50 per 0.5 s")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("reading CreateTime -> alert ack (ms)")
    ax_lat.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the points stay visible
    cores = alerts["cores"]
    ax_cpu.plot(cores["t_s"], cores["machine"], color="k", lw=1.0, label="machine (everything)")
    ax_cpu.plot(cores["t_s"], cores["broker"], color="tab:orange", lw=1.0, label="embedded broker")
    ax_cpu.plot(cores["t_s"], cores["load_generator"], color="tab:green", lw=1.0, label="load generator")
    ax_cpu.axhline(os.cpu_count() or 1, color="0.7", lw=0.6)
    ax_cpu.set_ylim(0, (os.cpu_count() or 1) * 1.05)
    ax_cpu.set_ylabel("cores, during (c)")
    ax_cpu.set_xlabel("seconds after the first paced reading")
    ax_cpu.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=10)
    return save(fig, path)
