"""Static checks of the deployment assets in deploy/ (no Docker engine, no cluster here).

What a user would otherwise only find out at `docker compose up` or `kubectl apply`: a YAML
that does not parse, a sub-command or flag the CLI does not have, a `python -m` module that is
not there, a settings key `load_settings` refuses, probes on the wrong path or port, topics
that do not match the settings, backfill shards that miss or overlap entities, a torch pin
that drifted from pyproject.toml. Every command found in the assets is parsed with the real
argparse parser and every settings source is loaded with the real ``load_settings``.
"""
from __future__ import annotations

import argparse
import base64
import fnmatch
import importlib
import importlib.util
import json
import math
import re
import tomllib

import pytest

from stream_ae.backfill import shard_of
from stream_ae.cli import build_parser
from stream_ae.stream.settings import ENV_PREFIX, Settings, load_settings

from deploy_reading import (
    CPU_IMAGE, DEPLOY, DOCKERFILES, Dockerfile, JOBS, K8S, ROOT, WORKLOADS, YAML_FILES,
    all_invocations, compose_file, compose_invocations, expand_vars, k8s_env, k8s_invocations,
    module_calls, one_object, parse_args_at, pod_spec, settings_for, split_commands,
    stream_ae_calls, yaml_docs)


# ---- every file parses ---------------------------------------------------------------------

@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(DEPLOY)) for p in YAML_FILES])
def test_every_yaml_file_parses_into_named_objects(path):
    docs = yaml_docs(path)
    assert docs, f"{path} is empty"
    if K8S in path.parents and path.name != "kustomization.yaml":
        for d in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(d), f"{path}: not a Kubernetes object: {d}"
            assert d["metadata"].get("name"), f"{path}: {d['kind']} without a name"


def test_assets_exist():
    names = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*")}
    assert {"Dockerfile", "Dockerfile.cuda", "compose.yaml", "README.md", "k8s/kustomization.yaml",
            "k8s/configmap.yaml", "k8s/secret.example.yaml", "k8s/deployment.yaml", "k8s/service.yaml",
            "k8s/cronjob-retrain.yaml", "k8s/backfill/job-backfill-indexed.yaml"} <= names
    assert (ROOT / ".dockerignore").is_file()


@pytest.mark.parametrize("kustomization", sorted(K8S.rglob("kustomization.yaml")),
                         ids=lambda p: str(p.relative_to(DEPLOY)))
def test_kustomization_lists_files_that_exist_and_names_the_images_used(kustomization):
    k = yaml_docs(kustomization)[0]
    here = kustomization.parent
    for res in k["resources"]:
        assert (here / res).exists(), f"{kustomization}: resource {res} does not exist"
    listed = {here / r for r in k["resources"]}
    stray = [p.name for p in here.glob("*.yaml")
             if p not in listed and p.name not in ("kustomization.yaml", "secret.example.yaml")]
    assert not stray, f"{kustomization}: {stray} are in the folder but not applied"
    images = {c["image"].split(":")[0] for r in listed for d in yaml_docs(r) if d["kind"] in WORKLOADS
              for c in pod_spec(d)["containers"]}
    assert images <= {i["name"] for i in k.get("images", [])}, "every image is retagged by kustomize"


# ---- commands, modules, settings -----------------------------------------------------------

def test_assets_run_stream_ae_in_every_place_expected():
    places = {inv.where.split(":")[-1] for inv, _ in stream_ae_calls()}
    assert {"stream-ae-detector/detector", "detector", "stream-ae-backfill/backfill"} <= places
    modules = {m for _, m, _ in module_calls()}
    assert modules >= JOBS


@pytest.mark.parametrize("call", stream_ae_calls(), ids=lambda c: c[0].where)
def test_every_stream_ae_command_line_parses_with_the_real_cli(call):
    inv, args = call
    leftover = [a for a in args if "$" in a]
    assert not leftover, f"{inv.where}: {leftover} would reach the CLI unexpanded; define the variable in env"
    parsed = parse_args_at(build_parser(), args, inv.where)
    if parsed.command == "serve":
        settings = settings_for(inv, args)
        assert settings.model.deployment or settings.model.artifact, f"{inv.where}: serve without a model"


def _job_parser(mod) -> argparse.ArgumentParser | None:
    """The module's own argparse parser: ``build_parser()``, or ``add_arguments(parser)``."""
    if hasattr(mod, "build_parser"):
        return mod.build_parser()
    if hasattr(mod, "add_arguments"):
        parser = argparse.ArgumentParser(prog=f"python -m {mod.__name__}")
        mod.add_arguments(parser)
        return parser
    return None


@pytest.mark.parametrize("module", sorted({m for _, m, _ in module_calls()}))
def test_every_python_module_entry_point_exists_and_takes_its_flags(module):
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    assert spec is not None, f"`python -m {module}` is used in deploy/ but the module does not exist"
    mod = importlib.import_module(module)
    assert hasattr(mod, "main"), f"{module} has no main(): `python -m {module}` would do nothing"
    parser = _job_parser(mod)
    assert parser is not None, f"{module}: no build_parser() or add_arguments(parser) to check the flags with"
    for inv, name, args in module_calls():
        if name == module:
            parse_args_at(parser, args, inv.where)
            if "--config" in args:
                settings_for(inv, args)


@pytest.mark.parametrize("inv", [i for i in all_invocations() if "--config" in " ".join(i.argv)],
                         ids=lambda i: i.where)
def test_settings_each_container_gets_load_through_load_settings(inv):
    args = [w for words in split_commands(inv.argv) for w in words]
    settings = settings_for(inv, args)
    volumes = [m for m, what in inv.mounts.items() if what == "<volume>"]
    paths = {"model.registry": settings.model.registry, "archive.root": settings.archive.root,
             "retrain.report_dir": settings.retrain.report_dir, "retrain.history": settings.retrain.history}
    for key, path in paths.items():
        if path and path.startswith("/"):   # absolute: must land on the shared volume, not in the container
            assert any(path == m or path.startswith(m + "/") for m in volumes), \
                f"{inv.where}: {key} = {path} is not on a mounted volume ({volumes})"


def test_env_settings_use_real_keys_and_a_bad_key_is_refused():
    # The check above is only worth something if load_settings refuses a wrong key.
    with pytest.raises(Exception, match="unknown setting"):
        load_settings(None, env={"STREAM_AE_KAFKA__BOOTSTRAP_SERVER": "kafka:9092"})
    names = {k for inv in all_invocations() for k in inv.env if k.startswith(ENV_PREFIX)}
    assert "STREAM_AE_KAFKA__CLIENT__SASL_PLAIN_PASSWORD" in names


def test_sasl_password_comes_from_a_secret_and_stays_masked():
    detector = pod_spec(one_object("Deployment", "stream-ae-detector"))["containers"][0]
    item = next(e for e in detector["env"] if e["name"] == "STREAM_AE_KAFKA__CLIENT__SASL_PLAIN_PASSWORD")
    assert "secretKeyRef" in item["valueFrom"], "the password must not be a literal in the manifest"
    settings = load_settings(None, env={"STREAM_AE_KAFKA__CLIENT__SASL_PLAIN_PASSWORD": "change-me"})
    assert "change-me" not in json.dumps(settings.redacted())
    assert "change-me" not in one_object("ConfigMap")["data"]["stream-ae.toml"]


# ---- Kubernetes: detector, retrain, backfill ----------------------------------------------

def _detector() -> tuple[dict, dict, Settings]:
    dep = one_object("Deployment", "stream-ae-detector")
    container = pod_spec(dep)["containers"][0]
    inv = next(i for i in k8s_invocations() if i.where.endswith("stream-ae-detector/detector"))
    return dep, container, settings_for(inv, inv.argv)


def _port(container: dict, ref) -> int:
    if isinstance(ref, int):
        return ref
    return next(p["containerPort"] for p in container["ports"] if p["name"] == ref)


def test_detector_probes_hit_the_health_endpoints_on_the_configured_port():
    dep, c, settings = _detector()
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    assert (live["path"], ready["path"]) == ("/healthz", "/readyz")
    assert _port(c, live["port"]) == _port(c, ready["port"]) == settings.ops.health_port
    start = c["startupProbe"]   # a slow model download or GPU warm-up is not a dead pod
    assert start["httpGet"]["path"] == "/healthz" and _port(c, start["httpGet"]["port"]) == settings.ops.health_port
    assert start["periodSeconds"] * start["failureThreshold"] >= 300
    assert math.isinf(settings.model.wait_for_model_s), "a new cluster's detectors crash-loop until a first model"
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == settings.ops.metrics_port
    assert settings.ops.metrics_port in {p["containerPort"] for p in c["ports"]}


def test_ops_defaults_are_what_the_assets_assume():
    defaults = Settings().ops
    assert (defaults.health_port, defaults.metrics_port) == (8080, 9108)
    assert CPU_IMAGE.all("EXPOSE") == [f"{defaults.health_port} {defaults.metrics_port}"]


def test_service_targets_the_detector_ports():
    dep, c, _ = _detector()
    svc = one_object("Service")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    for p in svc["spec"]["ports"]:
        assert _port(c, p["targetPort"]) == p["port"]


def test_detector_replicas_do_not_exceed_the_readings_partitions():
    dep, _, _ = _detector()
    partitions = int(dep["metadata"]["annotations"]["stream-ae.io/readings-partitions"])
    assert 1 <= dep["spec"]["replicas"] <= partitions
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0   # no extra member, no extra rebalance


def test_detector_grace_period_outlasts_a_batch_a_flush_and_a_checkpoint():
    dep, _, settings = _detector()
    checkpoint_s = settings.kafka.checkpoint_interval_s
    # a producer flush waits up to delivery_timeout_ms (kafka-python's default 120 s), not request_timeout_ms;
    # a stop flushes twice (the checkpoint's settle and write), then closes the producer (10 s)
    flush_s = settings.kafka.client.get("delivery_timeout_ms", 120_000) / 1000
    needed = checkpoint_s + settings.batch.max_wait_ms / 1000 + 2 * flush_s + 10
    grace = pod_spec(dep)["terminationGracePeriodSeconds"]
    assert grace > needed, f"terminationGracePeriodSeconds {grace} <= {needed:.1f} s needed for a clean stop"


def test_detector_runs_as_non_root_with_resources():
    dep, c, _ = _detector()
    assert pod_spec(dep)["securityContext"]["runAsNonRoot"] is True
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]


def test_retrain_cronjob_never_overlaps_and_reports_failure():
    cron = one_object("CronJob", "stream-ae-retrain")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1
    assert job["template"]["spec"]["restartPolicy"] == "Never"   # a failed run shows as a failed pod
    fields = cron["spec"]["schedule"].split()
    assert len(fields) == 5, f"schedule {cron['spec']['schedule']!r} is not a 5-field cron expression"
    # bad settings (2) and a conflict (3) are not retried: a retry repeats the error or waits on the lock again
    from jobs.retrain import __doc__ as exit_codes

    assert "2 bad settings or flags; 3 conflict" in " ".join(exit_codes.split())
    rules = job["podFailurePolicy"]["rules"]
    container = job["template"]["spec"]["containers"][0]["name"]
    assert [(r["action"], r["onExitCodes"]["containerName"], r["onExitCodes"]["operator"],
             sorted(r["onExitCodes"]["values"])) for r in rules] == [("FailJob", container, "In", [2, 3])]


def test_detector_disruption_budget_lets_a_drain_evict_pods_that_are_not_ready():
    pdb = one_object("PodDisruptionBudget", "stream-ae-detector")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"   # a spare replica is never ready


def test_backfill_indexed_job_shards_cover_every_entity_exactly_once():
    job = one_object("Job", "stream-ae-backfill")
    spec = job["spec"]
    n = spec["completions"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == n
    container = spec["template"]["spec"]["containers"][0]
    env = k8s_env(container)
    argv = container["args"]
    shard_word = argv[argv.index("--shard") + 1]
    assert "$(JOB_COMPLETION_INDEX)" in shard_word
    shards = []
    for index in range(n):
        parsed = parse_args_at(build_parser(), [expand_vars(w, {**env, "JOB_COMPLETION_INDEX": str(index)}) for w in argv],
                        f"backfill index {index}")
        shards.append(parsed.shard)
    assert shards == [(i, n) for i in range(n)], f"the {n} pods run shards {shards}"
    entities = [f"pump-{i}" for i in range(2000)] + ["boiler/7", "ünit-ä", ""]
    owners = {e: [i for i, k in shards if shard_of(e, k) == i] for e in entities}
    assert all(len(o) == 1 for o in owners.values()), "an entity is scored by none or by two shards"
    assert {o[0] for o in owners.values()} == set(range(n)), "some pod gets no entity"


# ---- compose --------------------------------------------------------------------------------

def _topics() -> dict[str, dict]:
    """Topics the compose `topics` service creates: name -> {partitions, config}."""
    svc = compose_file()["services"]["topics"]
    out = {}
    for words in split_commands([*svc["entrypoint"], *svc["command"]]):
        if not words[0].endswith("kafka-topics.sh") or "--create" not in words:
            continue
        name = words[words.index("--topic") + 1]
        configs = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--config")
        out[name] = {"partitions": int(words[words.index("--partitions") + 1]), "config": configs}
    return out


def test_compose_creates_every_topic_the_services_use_with_matching_partitions():
    topics = _topics()
    env = compose_file()["services"]["kafka"]["environment"]
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"
    for inv in compose_invocations():
        args = [w for words in split_commands(inv.argv) for w in words]
        k = settings_for(inv, args).kafka
        for t in (k.readings_topic, k.alerts_topic, k.dead_letter_topic, k.state_topic,
                  settings_for(inv, args).archive.dead_letter_topic):
            assert t in topics, f"{inv.where} uses topic {t!r}, which compose does not create"
        assert topics[k.state_topic]["partitions"] == topics[k.readings_topic]["partitions"]
        assert topics[k.state_topic]["config"].get("cleanup.policy") == "compact"
        host, port = k.bootstrap_servers.split(",")[0].rsplit(":", 1)
        assert host in compose_file()["services"], f"{inv.where}: bootstrap host {host!r} is not a service"
        assert f"://:{port}" in env["KAFKA_LISTENERS"]


def test_compose_kafka_runs_in_kraft_mode():
    env = compose_file()["services"]["kafka"]["environment"]
    assert compose_file()["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in env["KAFKA_LISTENERS"]
    assert not any("ZOOKEEPER" in k for k in env)
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16, "CLUSTER_ID is a base64url UUID"


def test_compose_detector_scales_up_to_the_partitions_and_stops_gracefully():
    services = compose_file()["services"]
    detector = services["detector"]
    assert "ports" not in detector, "published ports would stop `--scale detector=N`"
    inv = next(i for i in compose_invocations() if i.where.endswith("detector"))
    assert math.isinf(settings_for(inv, inv.argv).model.wait_for_model_s), "it would restart until a first model"
    assert detector["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert int(detector["stop_grace_period"].rstrip("s")) > 30
    for name in ("archiver", "retrain"):
        assert services[name]["healthcheck"]["disable"] is True, f"{name} serves no /healthz"
    assert any("sleep" in w for words in split_commands([*services["retrain"]["entrypoint"],
                                                   *services["retrain"]["command"]]) for w in words)


# ---- images -------------------------------------------------------------------------------

def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_torch_pin_equals_pyproject(path):
    pin = next(d for d in _pyproject()["project"]["dependencies"] if re.match(r"torch\s*==", d))
    want = pin.split("==")[1].strip()
    image = Dockerfile.read(path)
    assert image.args.get("TORCH_VERSION") == want, f"{path.name} installs torch {image.args.get('TORCH_VERSION')}"
    assert any('"torch==${TORCH_VERSION}"' in r for r in image.all("RUN"))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_entrypoint_user_healthcheck_and_copies(path):
    image = Dockerfile.read(path)
    scripts = _pyproject()["project"]["scripts"]
    assert image.exec_form("ENTRYPOINT") == ["stream-ae"] and "stream-ae" in scripts
    user = image.all("USER")[-1].split(":")[0]
    assert user not in ("root", "0"), f"{path.name} runs as root"
    health = image.all("HEALTHCHECK")
    assert len(health) == 1 and "/healthz" in health[0]
    assert f"'{Settings().ops.health_port}'" in health[0]
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    for copy in image.all("COPY"):
        *sources, _ = copy.split()
        for src in sources:
            assert (ROOT / src).exists(), f"{path.name}: COPY {src}: not in the repository"
            assert not any(fnmatch.fnmatch(src, pat) or src.startswith(pat.rstrip("/") + "/")
                           for pat in ignored), f"{path.name}: COPY {src} is excluded by .dockerignore"


def test_cpu_image_uses_the_cpu_wheel_and_the_slim_base():
    assert CPU_IMAGE.all("FROM") == ["python:3.11-slim"]
    assert CPU_IMAGE.args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    cuda = Dockerfile.read(DEPLOY / "Dockerfile.cuda")
    assert cuda.args["CUDA_BASE"].startswith("nvidia/cuda:")
    assert "/whl/cu" in cuda.args["TORCH_INDEX_URL"]
