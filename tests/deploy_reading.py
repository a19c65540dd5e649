"""Reading the deployment assets in deploy/: YAML objects, Dockerfiles, and every command a
container, a compose service or an image runs, with its environment (``test_deploy_assets.py``
checks them)."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml   # pyyaml, in the dev extra

from stream_ae.stream.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILES = (DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda")
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
JOBS = {"jobs.archive", "jobs.retrain"}
SHELLS = {"sh", "/bin/sh", "bash", "/bin/bash"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
_K8S_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


# ---- reading the assets ---------------------------------------------------------------------

def yaml_docs(path: Path) -> list:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _k8s_objects() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(K8S.rglob("*.yaml")) if p.name != "kustomization.yaml"
            for d in yaml_docs(p)]


def one_object(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in _k8s_objects() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    if len(found) != 1:
        pytest.fail(f"expected one {kind} {name or ''} in {K8S}, found {len(found)}")
    return found[0]


def pod_spec(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


@dataclass
class Dockerfile:
    path: Path
    instructions: list[tuple[str, str]]          # (INSTRUCTION, rest of line), continuations joined
    args: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "Dockerfile":
        text = re.sub(r"\\\n", " ", path.read_text())
        instructions, args = [], {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
            if word.upper() == "ARG" and "=" in rest:
                key, _, value = rest.strip().partition("=")
                args[key] = value
        return cls(path, instructions, args)

    def all(self, word: str) -> list[str]:
        return [rest for w, rest in self.instructions if w == word]

    def exec_form(self, word: str) -> list[str]:
        values = self.all(word)
        if len(values) != 1:
            pytest.fail(f"{self.path.name}: expected one {word}, found {len(values)}")
        return json.loads(values[0])


CPU_IMAGE = Dockerfile.read(DEPLOY / "Dockerfile")


@dataclass
class Invocation:
    """One command line a container runs, with the environment it runs in."""
    where: str
    argv: list[str]
    env: dict[str, str]
    mounts: dict[str, str]       # container path -> TOML text or "<volume>" (what is mounted there)


def _split_script(script: str) -> list[list[str]]:
    """Simple commands of a `sh -c` script: one per line and per `;`, `&&`, `||`, `|`, `&`;
    redirections and shell keywords dropped."""
    commands = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.commenters = "#"
        words, skip = [], False
        for token in lexer:
            if skip:
                skip = False
            elif token in (";", "&&", "||", "|", "&"):
                commands.append(words)
                words = []
            elif token[0] in "<>":
                skip = True                 # the redirection's target
            else:
                words.append(token)
        commands.append(words)
    return [w for w in commands if w and w[0] not in ("do", "done", "while", "then", "fi", "if", ":")]


def split_commands(argv: list[str]) -> list[list[str]]:
    if argv and argv[0] in SHELLS and "-c" in argv:
        return _split_script(argv[argv.index("-c") + 1])
    return [argv]


def k8s_env(container: dict) -> dict[str, str]:
    """A container's env with secretKeyRef resolved from secret.example.yaml, fieldRef as a stand-in."""
    secrets = {d["metadata"]["name"]: d.get("stringData", {}) for _, d in _k8s_objects() if d["kind"] == "Secret"}
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            if ref["key"] not in secrets.get(ref["name"], {}):
                pytest.fail(f"env {item['name']} reads Secret {ref['name']}/{ref['key']}, "
                            "which secret.example.yaml does not show")
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = "0" if "job-completion-index" in item["valueFrom"]["fieldRef"]["fieldPath"] \
                else "stream-ae-pod-0"
    return env


def k8s_invocations() -> list[Invocation]:
    entrypoint, cmd = CPU_IMAGE.exec_form("ENTRYPOINT"), CPU_IMAGE.exec_form("CMD")
    config_maps = {d["metadata"]["name"]: d["data"] for _, d in _k8s_objects() if d["kind"] == "ConfigMap"}
    out = []
    for path, obj in _k8s_objects():
        if obj["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(obj)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            # Kubernetes semantics: command replaces ENTRYPOINT (and drops CMD); args replace CMD.
            argv = list(c["command"]) if "command" in c else list(entrypoint)
            argv += list(c.get("args", [] if "command" in c else cmd))
            mounts = {}
            for m in c.get("volumeMounts", []):
                vol = volumes[m["name"]]
                if "configMap" in vol:
                    for key, text in config_maps[vol["configMap"]["name"]].items():
                        mounts[f"{m['mountPath']}/{key}"] = text
                else:
                    mounts[m["mountPath"]] = "<volume>"
            where = f"{path.relative_to(DEPLOY)}:{obj['metadata']['name']}/{c['name']}"
            out.append(Invocation(where, argv, k8s_env(c), mounts))
    return out


def compose_file() -> dict:
    return yaml_docs(COMPOSE)[0]


def compose_invocations() -> list[Invocation]:
    entrypoint, cmd = CPU_IMAGE.exec_form("ENTRYPOINT"), CPU_IMAGE.exec_form("CMD")
    out = []
    for name, svc in compose_file()["services"].items():
        if not str(svc.get("image", "")).startswith("stream-ae"):
            continue
        ep = svc.get("entrypoint", entrypoint)
        # Compose: entrypoint replaces ENTRYPOINT and drops the image's CMD; command replaces CMD.
        command = svc.get("command", [] if "entrypoint" in svc else cmd)
        argv = [a.replace("$$", "$") for a in [*ep, *command]]
        mounts = {}
        for spec in svc.get("volumes", []):
            source, target = spec.split(":")[:2]
            host = (DEPLOY / source) if source.startswith(".") else None
            mounts[target] = host.read_text() if host is not None and host.is_file() else "<volume>"
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        out.append(Invocation(f"compose.yaml:{name}", argv, env, mounts))
    return out


def _dockerfile_invocations() -> list[Invocation]:
    out = []
    for path in DOCKERFILES:
        image = Dockerfile.read(path)
        toml = (ROOT / "deploy" / "stream-ae.example.toml").read_text()
        out.append(Invocation(path.name, image.exec_form("ENTRYPOINT") + image.exec_form("CMD"),
                              {}, {"/etc/stream-ae/stream-ae.toml": toml}))
    return out


def all_invocations() -> list[Invocation]:
    return k8s_invocations() + compose_invocations() + _dockerfile_invocations()


def expand_vars(word: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) and shell ${VAR} / $VAR expansion from the container's env."""
    word = _K8S_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), word)
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), m.group(0)), word)


def parse_args_at(parser: argparse.ArgumentParser, argv: list[str], where: str) -> argparse.Namespace:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `{shlex.join(argv)}` is refused by the parser: {err.getvalue().strip()}")


def stream_ae_calls() -> list[tuple[Invocation, list[str]]]:
    calls = []
    for inv in all_invocations():
        for words in split_commands(inv.argv):
            if words[0] == "stream-ae":
                calls.append((inv, [expand_vars(w, inv.env) for w in words[1:]]))
    return calls


def module_calls() -> list[tuple[Invocation, str, list[str]]]:
    calls = []
    for inv in all_invocations():
        for words in split_commands(inv.argv):
            if re.fullmatch(r"python[0-9.]*", Path(words[0]).name) and words[1:2] == ["-m"]:
                calls.append((inv, words[2], [expand_vars(w, inv.env) for w in words[3:]]))
    return calls


def settings_for(inv: Invocation, args: list[str]) -> Settings:
    """What `--config PATH [--set ...]` gives in that container: the mounted TOML + its env."""
    config = args[args.index("--config") + 1] if "--config" in args else None
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    env = {k: v for k, v in inv.env.items() if k.startswith(ENV_PREFIX)}
    text = inv.mounts.get(config) if config else None
    if config and text is None:
        pytest.fail(f"{inv.where}: --config {config} but nothing is mounted there "
                    f"(mounts: {sorted(inv.mounts)})")
    if text == "<volume>":
        pytest.fail(f"{inv.where}: --config {config} is a volume path, not a known file")
    with tempfile.TemporaryDirectory() as tmp:
        path = None
        if text is not None:
            path = Path(tmp) / "stream-ae.toml"
            path.write_text(text)
        return load_settings(path, env=env, overrides=overrides)
