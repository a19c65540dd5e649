"""The `stream-ae` command line: argument parsing and dispatch only.

Every sub-command lives in the module that owns its concern; this file turns flags into
calls and turns project errors into one clear line and a non-zero exit code.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stream_ae import __version__
from stream_ae.allocator import keep_freed_memory
from stream_ae.cli_flags import Parser, add_train_parser, layout_flags, time_flags, variant_option_flags
from stream_ae.configs import PRECISIONS, parse_counts
from stream_ae.errors import ConfigError, StreamAEError
from stream_ae.redaction import mask_uri
from stream_ae.variant_options import VARIANTS

EXIT_USAGE = 2
EXIT_ERROR = 1


def _shard(text: str) -> tuple[int, int]:
    """Parse `i/n` into (i, n); argparse reports the message on failure."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n, e.g. 0/4; got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n and n >= 1")
    return i, n


def set_flag(p: argparse.ArgumentParser) -> None:
    """``--set SECTION.KEY=VALUE``, repeatable: the settings flag of ``serve`` and ``broker``."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="stream-ae",
        description="Streaming anomaly detection for sensor time series with autoencoders.",
    )
    parser.add_argument("--version", action="version", version=f"stream-ae {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    add_train_parser(sub)

    b = sub.add_parser("backfill", help="score a Parquet archive with a trained model",
                       description="Score a Parquet archive; writes a Parquet scores dataset partitioned like the input.")
    b.add_argument("--archive", required=True, help="Parquet file, directory, hive dataset, or filesystem URI")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="artifact directory, e.g. models/<version>")
    src.add_argument("--deployment", help="the version a registry deployment points at, e.g. production")
    b.add_argument("--registry", default="models", help="registry for --deployment (default: models)")
    b.add_argument("--out", required=True, help="output directory or URI for the scores dataset")
    b.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: score only this worker's share of entities")
    layout_flags(b)
    time_flags(b)
    b.add_argument("--batch-rows", type=int, default=262_144, help="rows per record batch read")
    b.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    b.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32, or bf16 (CUDA, or a CPU with native bf16) / fp16 (CUDA) autocast")
    b.add_argument("--checkpoint-every", type=float, default=None, metavar="SECONDS",
                   help="save the checkpoint at most this often (default 30; 0: after every input file); "
                        "a killed run re-scores what it did since")
    b.add_argument("--restart", action="store_true",
                   help="start over: delete this shard's checkpoint and the scores it lists (and those of "
                        "runs split into another number of shards), then score again")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="evaluate on a public benchmark",
                       description="Evaluate models on a labelled benchmark with its published protocol.")
    e.add_argument("benchmark", choices=("skab",), help="benchmark name")
    e.add_argument("--data", default="../shared/data/skab", help="benchmark data directory")
    e.add_argument("--model", default="conv", help="conv, lstm, or conv,lstm")
    e.add_argument("--variant", default="undercomplete",
                   help=f"comma-separated variants, or 'all' ({', '.join(VARIANTS)})")
    e.add_argument("--protocol", default="all",
                   help="published (A) | anomaly-free (B) | all: the table names them A and B")
    e.add_argument("--json", dest="json_path", default=None, help="write the figures to this JSON file")
    e.add_argument("--plot", default=None, help="write a picture of one file's signals, scores and labels")
    e.add_argument("--plot-file", default="valve1/1.csv", help="which SKAB file to plot")
    e.add_argument("--device", default="cpu", help="auto | cpu | cuda")
    e.add_argument("--seed", type=int, default=0,
                   help="seed of every model's training; the README's figures are seed 0 (default: 0)")
    e.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="scoring precision (the threshold is calibrated in fp32, as `train` does)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    variant_option_flags(e)

    d = sub.add_parser("demo", help="run the main job end to end on synthetic data",
                       description="Synthetic plant -> train -> detect -> summary and plot.")
    d.add_argument("--out", default="demo-out", help="working directory for data, model and plot")
    d.add_argument("--offline", action="store_true", help="backfill only, no Kafka")
    d.add_argument("--seed", type=int, default=7, help="seed of the synthetic plant and the model")

    s = sub.add_parser("serve", help="run the streaming detector against Kafka",
                       description="Consume readings, score windows, publish alerts.")
    s.add_argument("--config", default=None, help="TOML settings file (default: $STREAM_AE_CONFIG); "
                   "precedence: defaults < file < STREAM_AE_<SECTION>__<KEY> environment < --set")
    set_flag(s)

    lb = sub.add_parser("broker", help="run the embedded broker with the service's topics, to try serve locally",
                        description="Start the embedded Kafka-compatible broker (Tansu, memory storage), create "
                                    "the topics the settings name, print the serve command; until Ctrl-C.")
    lb.add_argument("--config", default=None, help="TOML settings file whose topic names to create")
    set_flag(lb)
    lb.add_argument("--partitions", type=int, default=4, help="partitions of the readings and state topics")

    m = sub.add_parser("models", help="list, promote and roll back model versions",
                       description="The model registry: versions and the deployment pointers consumers follow.")
    registry_help = "registry directory or URI, before or after ACTION (default: models)"
    m.add_argument("--registry", default="models", help=registry_help)
    msub = m.add_subparsers(dest="action", metavar="ACTION")
    msub.required = True
    # After the action too: SUPPRESS keeps a value given before it (argparse would reset it to the default).
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--registry", default=argparse.SUPPRESS, help=registry_help)
    deployment = argparse.ArgumentParser(add_help=False)
    deployment.add_argument("--deployment", default="production", metavar="NAME",
                            help="the deployment pointer consumers follow (serve's model.deployment; "
                                 "default: production)")
    msub.add_parser("list", parents=[after], help="versions, with the deployments that point at them")
    pr = msub.add_parser("promote", parents=[after, deployment], help="point a deployment at a version")
    pr.add_argument("version", help="a version from `stream-ae models list`")
    pr.add_argument("--reason", default="manual promotion", help="kept in the deployment's history")
    msub.add_parser("rollback", parents=[after, deployment],
                    help="point a deployment back at its previous version")
    msub.add_parser("history", parents=[after, deployment], help="a deployment's promotions, oldest first")

    j = sub.add_parser("job", help="scheduled jobs: archive the stream, retrain",
                       description="Run a scheduled job; same flags as `python -m jobs.NAME` "
                                   "(see `stream-ae job NAME --help`).")
    j.add_argument("name", choices=("archive", "retrain"), help="archive: readings topic -> Parquet history; "
                   "retrain: challenger vs champion, promote by rule")
    j.add_argument("args", nargs=argparse.REMAINDER, help="the job's own flags, e.g. --config stream-ae.toml")

    bench = sub.add_parser("bench", help="benchmarks that print their figures")
    bench.add_argument("which", choices=("backfill", "stream", "scoring", "detector", "soak", "drift"),
                       help="what to measure (scoring: the scorer alone, per precision and forward-pass "
                            "size, against the device's own ceilings; detector: the stream's per-reading "
                            "cost against the entity "
                            "count, no broker; soak: the detector's memory over millions of readings, "
                            "steady and with new entity ids arriving; drift: what the drift watch reports "
                            "over a week of a plant with a daily rhythm, with and without a sensor change)")
    bench.add_argument("--json", dest="json_path", default=None, help="also write the figures here")
    bench.add_argument("--rows", default=None, help="backfill: comma-separated archive sizes, e.g. 1000000,10000000")
    bench.add_argument("--n", type=int, default=None, help="stream, detector: number of readings; soak: "
                       "readings per phase")
    bench.add_argument("--entities", default=None,
                       help="detector: comma-separated entity counts (default 16,256,4096); soak: one "
                            "count (default 256); backfill: one count, an archive of one file per entity")
    bench.add_argument("--consumers", default=None,
                       help="stream: scale-out, comma-separated detector process counts, e.g. 1,2")
    bench.add_argument("--precision", default="fp32", choices=PRECISIONS,
                      help="scoring precision: the backfill's, or the detector's model.precision "
                           "(bf16: CUDA or a CPU with native bf16)")
    bench.add_argument("--device", default=None, help="backfill (default cpu), scoring (default auto): cpu | cuda | "
                       "cuda:N | auto (the stream benchmark's detector uses model.device=auto)")
    return parser


def _layout(args, default=None):
    from stream_ae.data.layout import Layout

    base = default or Layout()
    channels = tuple(c.strip() for c in args.channels.split(",") if c.strip()) if args.channels else base.channels
    return Layout(entity=args.entity_col or base.entity, timestamp=args.time_col or base.timestamp,
                  channels=channels, timestamp_unit=args.time_unit or base.timestamp_unit)


def cmd_train(args) -> int:
    from stream_ae.commands import train_command

    path, artifact = train_command(args, _layout(args))
    print(f"model saved: {path}")
    print(f"channels ({len(artifact.channels)}): {', '.join(artifact.channels)}")
    t = artifact.training
    m, q = t["metrics"], t["metrics"]["val_score_quantiles"]
    print(f"{t['epochs']} epochs (best {t['best_epoch']}), validation loss {m['val_loss']:.4g}; threshold "
          f"{m['threshold_value']:.4g}, validation scores p50 {q['0.5']:.4g} / p99 {q['0.99']:.4g} / max "
          f"{m['val_score_max']:.4g}")
    return 0   # training warnings (training/checks.py) were logged


def cmd_backfill(args) -> int:
    from stream_ae.backfill import run_backfill

    model = args.model
    if args.deployment:
        from stream_ae.registry import Registry

        model = str(Registry(args.registry).resolve(args.deployment))
    layout = None
    if args.entity_col or args.time_col or args.channels or args.time_unit:  # the model's, with these changed
        from stream_ae.artifact import load_artifact

        layout = _layout(args, load_artifact(model).layout)
    report = run_backfill(args.archive, model, args.out, shard=args.shard, start=args.start,
                          end=args.end, device=args.device, batch_rows=args.batch_rows,
                          progress=not args.no_progress, layout=layout, restart=args.restart,
                          precision=args.precision,
                          **({} if args.checkpoint_every is None else {"checkpoint_every_s": args.checkpoint_every}))
    r = report
    state = "complete" if r.complete else "stopped early (re-run to resume)"
    print(f"backfill shard {r.shard[0]}/{r.shard[1]} {state}: {r.windows_scored:,} windows from "
          f"{r.rows_read:,} rows, {r.anomalies:,} anomalous, {r.duplicates_dropped:,} duplicate rows "
          f"dropped; {r.fragments_done} fragments ({r.fragments_resumed} resumed) -> {len(r.output_files)} "
          f"files in {args.out}; {r.seconds:.1f} s, {r.windows_per_s:,.0f} windows/s; {r.checkpoints_saved} "
          f"checkpoint(s) saved in {r.checkpoint_seconds:.1f} s; model {r.model_version}")
    quiet = list(r.entities_without_windows.items())
    if quiet:   # read, but not one window: a sensor that entity never had, or too few rows
        print(f"warning: {len(quiet)} entit{'y' if len(quiet) == 1 else 'ies'} had rows but no window scored: "
              + "; ".join(f"{name} ({why})" for name, why in quiet[:10]) + ("; ..." if len(quiet) > 10 else ""),
              file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from stream_ae.evaluation.skab import run_skab_cli

    return run_skab_cli(args) or 0


def cmd_demo(args) -> int:
    from stream_ae.demo import run_demo

    return run_demo(Path(args.out), offline=args.offline, seed=args.seed) or 0


def cmd_serve(args) -> int:
    from stream_ae.stream.serve import serve

    verbose = ["ops.log_level=DEBUG"] if args.verbose else []   # -v: as the service's own setting
    return serve(args.config, [*verbose, *args.overrides]) or 0


def cmd_broker(args) -> int:
    from stream_ae.stream.local_broker import run_until_stopped

    return run_until_stopped(args.config, args.overrides, args.partitions)


def cmd_bench(args) -> int:
    if args.which == "backfill":
        from stream_ae.bench.backfill import run_backfill_bench

        kwargs = {}
        if args.entities:
            from stream_ae.bench.backfill_files import run_files_bench

            entities = parse_counts(args.entities, "--entities")
            if len(entities) != 1 or args.rows:
                raise ConfigError("bench backfill takes one --entities count (an archive of one file per "
                                  f"entity), and not with --rows; got --entities {args.entities!r}")
            run_files_bench(entities[0], json_path=args.json_path)
            return 0
        if args.rows:
            kwargs["rows"] = parse_counts(args.rows, "--rows")
        run_backfill_bench(json_path=args.json_path, device=args.device or "cpu", precision=args.precision, **kwargs)
        return 0
    if args.which == "scoring":
        from stream_ae.bench.scoring import run_scoring_bench

        run_scoring_bench(device=args.device or "auto", json_path=args.json_path)
        return 0
    if args.which == "detector":
        from stream_ae.bench.detector import DEFAULT_ENTITIES, DEFAULT_N, run_detector_bench

        entities = parse_counts(args.entities, "--entities") if args.entities else DEFAULT_ENTITIES
        run_detector_bench(entities, args.n or DEFAULT_N, args.precision, args.json_path)
        return 0
    if args.which == "soak":
        from stream_ae.bench.soak import run_soak_bench

        entities = parse_counts(args.entities, "--entities") if args.entities else (None,)
        if len(entities) != 1:
            raise ConfigError(f"bench soak takes one --entities count, got {args.entities!r}")
        run_soak_bench(n=args.n, entities=entities[0], json_path=args.json_path)
        return 0
    if args.which == "drift":
        from stream_ae.bench.drift import run_drift_bench

        run_drift_bench(json_path=args.json_path)
        return 0
    from stream_ae.bench.stream import run_from_flags

    run_from_flags(n=args.n, json_path=args.json_path, consumers=args.consumers, precision=args.precision)
    return 0


def cmd_models(args) -> int:
    from stream_ae.registry import Registry

    reg = Registry(args.registry)
    if args.action == "list":
        if not reg.exists():
            print(f"stream-ae models: error: registry {args.registry} does not exist; pass the folder or URI "
                  "that `stream-ae train --out` or the retrain job wrote (--registry)", file=sys.stderr)
            return EXIT_ERROR
        serving = {}
        for dep in reg.deployments():
            serving.setdefault(reg.current(dep), []).append(dep)
        versions = reg.versions()
        if not versions:
            inner = sorted(str(p.parent.parent) for p in Path(args.registry).glob("*/*/manifest.json")) \
                if reg.local else []   # a registry one level down: the demo keeps one per plant digest
            print(f"no model versions in {args.registry}" + (f"; these folders in it hold some: {', '.join(inner)} "
                                                            "(pass one as --registry)" if inner else ""))
        for v in versions:
            deps = ", ".join(serving.get(v["version"], []))
            print(f"{v['version']:<52} {v.get('created_at') or '':<22} {('<- ' + deps) if deps else ''}")
    elif args.action == "promote":
        before = reg.current(args.deployment)
        rec = reg.promote(args.deployment, args.version, args.reason)
        if before == args.version:
            print(f"{args.deployment} already serves {args.version}; nothing changed")
        else:
            was = rec.get("previous")
            print(f"{args.deployment} -> {rec['version']} " + (f"(was {was})" if was else "(its first version)"))
            _warn_unless_hot_swappable(reg, args.deployment, rec)
    elif args.action == "rollback":
        rec = reg.rollback(args.deployment)
        print(f"{args.deployment} -> {rec['version']} (rolled back from {rec.get('previous')})")
        _warn_unless_hot_swappable(reg, args.deployment, rec)
    else:
        history = reg.history(args.deployment)
        if not history:
            known = reg.deployments()
            print(f"deployment {args.deployment!r} has no promotions in {args.registry}; deployments: "
                  f"{', '.join(known) if known else '(none)'}", file=sys.stderr)
            return EXIT_ERROR
        for rec in history:
            print(f"{rec.get('promoted_at', ''):<28} {rec['version']:<52} {rec.get('reason', '')}")
    return 0


def _warn_unless_hot_swappable(reg, deployment: str, rec: dict) -> None:
    """Running consumers keep a model whose channels or window length the new one changes (they
    refuse the hot reload), while restarted ones load the new one: say so where it was done."""
    from stream_ae.artifact import load_artifact, reload_shape

    if not rec.get("previous"):
        return
    try:
        old, new = (reload_shape(load_artifact(reg.artifact_path(v))) for v in (rec["previous"], rec["version"]))
    except StreamAEError:   # the old version no longer loads: consumers restarting on it fail anyway
        return
    if old != new:
        print(f"stream-ae models: warning: {rec['version']} has channels {list(new[0])} and windows of {new[1]}, "
              f"{rec['previous']} {list(old[0])} and {old[1]}: consumers running {deployment!r} cannot hot-swap "
              "it and keep the old model (stream_ae_model_reload_failures_total counts their refusals); "
              "restart them all to serve the new one", file=sys.stderr)


def cmd_job(args) -> int:
    import importlib

    return importlib.import_module(f"jobs.{args.name}").main(args.args, prog=f"stream-ae job {args.name}")


COMMANDS = {"job": cmd_job, "models": cmd_models, "train": cmd_train, "backfill": cmd_backfill,
            "evaluate": cmd_evaluate, "demo": cmd_demo, "serve": cmd_serve, "broker": cmd_broker, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keep_freed_memory()  # torch's freed buffers stay in the process (allocator.py: no page-fault churn)

    def say(what: str, exc: BaseException) -> None:   # a URI's credentials never reach stderr
        print(f"stream-ae {args.command}: {what}: {mask_uri(str(exc))}", file=sys.stderr)

    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        say("configuration error", exc)
        return EXIT_USAGE
    except StreamAEError as exc:
        say("error", exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"stream-ae {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:   # a path that is a file, a folder or not readable: it names the path
        say("error", exc)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
