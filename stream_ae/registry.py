"""Model registry: artifact versions, one atomic pointer per deployment, a promotion history.

Layout under ``root`` (a local directory or any pyarrow filesystem URI, e.g. ``s3://bucket/models``)::

    <version>/{model.safetensors, manifest.json}      immutable, written by save_artifact
    deployments/<name>.json                            the pointer: the version serving <name>
    deployments/<name>/history/<time>-<seq>-<version>.json   one file per promotion, never rewritten

The pointer is replaced whole (temp file + rename on a local disk, a single object PUT on an
object store), so a reader sees the old or the new version, never a mix. ``previous`` in the
pointer is the compare-and-swap token: ``promote(..., expect=v)`` refuses when the pointer no
longer names ``v`` (another promotion won meanwhile). On a local disk the read-compare-write
runs under an exclusive lock file, so two processes cannot both win; object stores offer no
such lock here, so the check there narrows the race to one read-write round trip.

>>> import tempfile
>>> reg = Registry(tempfile.mkdtemp())
>>> reg.current("production") is None
True
>>> reg.promote("production", "conv-x")
Traceback (most recent call last):
...
stream_ae.errors.ConfigError: version 'conv-x' is not in the registry ...; known versions: (none)
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from stream_ae import durable, lockfile
from stream_ae.errors import ArtifactError, ConfigError, StreamAEError
from stream_ae.redaction import mask_uri

log = logging.getLogger(__name__)
DEPLOYMENTS = "deployments"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_UNSET = object()
_LINEAGE_MAX = 100   # rollback depth kept in the pointer


class PromotionConflict(StreamAEError):
    """A promotion lost a race: the deployment pointer moved since the caller read it."""


def _is_pointer(record) -> bool:
    return isinstance(record, dict) and isinstance(record.get("version"), str)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Registry:
    """Versioned artifacts and named deployments on a local path or a pyarrow filesystem URI.

    Parameters
    ----------
    root : str or Path
        Directory or URI (``s3://``, ``gs://``, ``hdfs://``, ``file://`` ...).
    filesystem : pyarrow.fs.FileSystem, optional
        Use this filesystem with ``root`` as a path in it (tests, custom credentials).
    cache_dir : str, optional
        Where :meth:`resolve` downloads artifacts from a remote registry.
    """

    def __init__(self, root, filesystem=None, cache_dir: str | None = None):
        import pyarrow.fs as pafs

        root = str(root)
        if filesystem is not None:
            self.fs, self.path = filesystem, root.rstrip("/")
        elif "://" in root:
            try:
                self.fs, self.path = pafs.FileSystem.from_uri(root)
            except Exception as exc:  # pyarrow raises ArrowInvalid/OSError/ValueError for bad URIs
                raise ConfigError(mask_uri(f"model registry {root!r} is not a usable filesystem URI: {exc}")) from None
        else:
            self.fs, self.path = pafs.LocalFileSystem(), os.path.abspath(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.root = mask_uri(root)   # for messages and repr: an s3://KEY:SECRET@ URI is shown without its secret
        self.cache_dir = cache_dir
        self.lock_timeout_s = 30.0   # how long a promotion waits for another one

    def __repr__(self) -> str:
        return f"Registry({self.root!r})"

    # -- paths and small I/O -----------------------------------------------------------------
    def _join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts]) if self.path else "/".join(parts)

    def exists(self) -> bool:
        """Whether the registry's folder is there (a new one is made by the first ``publish``)."""
        return self._exists(self.path)

    def _exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _read_json(self, path: str) -> dict | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path} in registry {self.root} is not valid JSON: {exc}") from None

    def put_record(self, relpath: str, obj: dict) -> None:
        """Replace the JSON record at ``relpath`` under the root, whole (temp + rename on a
        local disk, one PUT on an object store). Jobs keep their small state files this way."""
        self._write_json(self._join(*relpath.split("/")), obj, replace=True)

    def get_record(self, relpath: str) -> dict | None:
        """The JSON record at ``relpath`` under the root; None when absent."""
        return self._read_json(self._join(*relpath.split("/")))

    def _write_json(self, path: str, obj: dict, *, replace: bool) -> None:
        data = json.dumps(obj, indent=2, sort_keys=True).encode("utf-8")
        parent = path.rsplit("/", 1)[0]
        durable.create_dir_on(self.fs, parent)
        if not replace and self._exists(path):
            raise ArtifactError(f"{path} already exists in registry {self.root}; history entries are immutable")
        if not self.local:   # an object store makes a single PUT visible whole
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
        if replace:
            durable.publish(tmp, path)
            return
        durable.fsync(tmp)
        try:
            os.link(tmp, path)   # fails if `path` appeared meanwhile: never overwrites
        finally:
            os.unlink(tmp)
        durable.fsync(parent)

    def _locked(self, deployment: str):
        """Exclusive lock of one deployment's pointer (local disk only; see the module doc)."""
        if not self.local:
            return contextlib.nullcontext()
        lock = self._join(DEPLOYMENTS, f".{deployment}.lock")
        return lockfile.exclusive(lock, self.lock_timeout_s, lambda holder: PromotionConflict(
            f"deployment {deployment!r} is locked by another promotion ({lock}, held by {holder or 'unknown'}) "
            f"for over {self.lock_timeout_s:g} s; retry"))

    # -- versions ----------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the registry's root is there (a mistyped ``--registry`` is not an empty registry)."""
        return self._exists(self.path)

    def versions(self) -> list[dict]:
        """Every published version, oldest first: version, kind, variant, created_at, metrics."""
        import pyarrow.fs as pafs

        if not self.exists():
            return []
        out = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.path)):
            if info.type != pafs.FileType.Directory or info.base_name.startswith(".") \
                    or info.base_name == DEPLOYMENTS:
                continue
            try:  # one folder still being copied by hand must not hide every other version
                manifest = self._read_json(f"{info.path}/manifest.json")
                if manifest is not None and not isinstance(manifest, dict):
                    raise ArtifactError(f"{info.path}/manifest.json in registry {self.root} is not a JSON object")
            except ArtifactError as exc:
                log.warning("skipping the folder %s of the registry: %s", info.base_name, exc)
                continue
            if manifest is None:
                continue
            model = manifest.get("model", {})
            out.append({"version": manifest.get("version", info.base_name), "kind": model.get("kind"),
                        "variant": model.get("variant"), "created_at": manifest.get("created_at"),
                        "metrics": manifest.get("training", {}).get("metrics", {})})
        return sorted(out, key=lambda v: (v["created_at"] or "", v["version"]))

    def publish(self, artifact) -> str:
        """Save an :class:`~stream_ae.artifact.Artifact` into the registry; returns its version."""
        from stream_ae.artifact import save_artifact

        if self.local:
            save_artifact(artifact, self.path)
            return artifact.version
        import pyarrow.fs as pafs

        from stream_ae.artifact import MANIFEST_FILE, WEIGHTS_FILE

        if self._exists(self._join(artifact.version, MANIFEST_FILE)):  # weights alone: a publish cut off, retried
            raise ArtifactError(f"version {artifact.version} already exists in {self.root}; "
                                "versions are never overwritten")

        final = self._join(artifact.version)
        with tempfile.TemporaryDirectory() as tmp:
            local = save_artifact(artifact, tmp)
            self.fs.create_dir(final, recursive=True)
            # Object stores cannot rename a folder: the manifest goes last, and a version
            # without its manifest is invisible to versions() and load.
            for name in (WEIGHTS_FILE, MANIFEST_FILE):
                pafs.copy_files(str(local / name), f"{final}/{name}", source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.fs)
        return artifact.version

    def _check_version(self, version: str) -> None:
        if _NAME_RE.match(version or "") and self._exists(self._join(version, "manifest.json")):
            return
        known = [v["version"] for v in self.versions()]
        raise ConfigError(f"version {version!r} is not in the registry {self.root}; known versions: "
                          f"{', '.join(known) if known else '(none)'}")

    # -- deployments -------------------------------------------------------------------------
    def _pointer_path(self, deployment: str) -> str:
        if not _NAME_RE.match(deployment or ""):
            raise ConfigError(f"deployment name {deployment!r} must be letters, digits, '.', '_' or '-'")
        return self._join(DEPLOYMENTS, f"{deployment}.json")

    def pointer(self, deployment: str) -> dict | None:
        """The deployment's pointer record, None when nothing was ever promoted."""
        path = self._pointer_path(deployment)
        record = self._read_json(path)
        if record is not None and not _is_pointer(record):
            raise ArtifactError(f"{path} in registry {self.root} is not a pointer record (a JSON object with a "
                                f"'version'); it holds {str(record)[:80]!r}. Promote a version again "
                                "(stream-ae models promote) to rewrite it")
        return record

    def current(self, deployment: str) -> str | None:
        """The version serving ``deployment``, or None."""
        p = self.pointer(deployment)
        return p["version"] if p else None

    def promote(self, deployment: str, version: str, reason: str = "", *, expect=_UNSET) -> dict:
        """Point ``deployment`` at ``version``; returns the new pointer record.

        ``expect``: the version the caller believes is serving (None: nothing yet). When the
        pointer names another one, :class:`PromotionConflict` is raised and nothing changes.
        Promoting the version already serving changes nothing and returns the pointer as it is
        (a deploy script run twice must not make the next rollback return to the same version).
        The version must load (:func:`~stream_ae.artifact.load_artifact`: weights, manifest and
        threshold calibration): a consumer could not use one that does not.
        """
        self._check_version(version)
        self.check_loads(version)
        return self._swap(deployment, version, reason, expect, rollback=False)

    def check_loads(self, version: str) -> None:
        """Raise :class:`ArtifactError` naming ``version`` when its artifact does not load."""
        from stream_ae.artifact import load_artifact

        try:
            load_artifact(self.artifact_path(version))
        except (ArtifactError, ConfigError) as exc:
            raise ArtifactError(f"version {version} cannot be used: {exc}") from None

    def rollback(self, deployment: str, reason: str = "rollback", *, expect=_UNSET) -> dict:
        """Go back to the version served before the current one was promoted.

        Repeated rollbacks walk further back (an undo stack kept in the pointer). Recorded in
        the history as a promotion with reason ``"rollback"``.
        """
        return self._swap(deployment, None, reason, expect, rollback=True)

    def _swap(self, deployment: str, version: str | None, reason: str, expect, rollback: bool) -> dict:
        path = self._pointer_path(deployment)
        if rollback and not self._exists(path):   # before the lock makes any folder (a mistyped registry)
            known = self.deployments()
            raise ConfigError(f"deployment {deployment!r} has never been promoted in registry {self.root}, so "
                              f"there is nothing to roll back; deployments: {', '.join(known) or '(none)'}")
        with self._locked(deployment):
            old = self._read_json(path)
            if old is not None and not _is_pointer(old):
                old = None   # a hand edit broke it (pointer() says so): this promotion rewrites it
            now_serving = old["version"] if old else None
            if expect is not _UNSET and expect != now_serving:
                raise PromotionConflict(
                    f"deployment {deployment!r} now serves {now_serving!r}, not the expected {expect!r}: "
                    "another promotion happened meanwhile; re-read and decide again")
            if not rollback and version == now_serving:
                return old   # already serving: nothing to record, nothing to undo
            lineage = list(old.get("lineage", [now_serving])) if old else []
            if rollback:
                while len(lineage) > 1 and lineage[-2] == now_serving:
                    lineage.pop()   # a re-promotion recorded by an earlier release: not a step back
                if len(lineage) < 2:
                    raise ConfigError(f"deployment {deployment!r} has no earlier version to roll back to "
                                      f"(serving {now_serving!r}); see its history")
                lineage.pop()
                version = lineage[-1]
                self._check_version(version)
                self.check_loads(version)   # as a promotion: consumers would refuse it and keep the current one
            else:
                lineage = (lineage + [version])[-_LINEAGE_MAX:]
            record = {"deployment": deployment, "version": version, "previous": now_serving,
                      "promoted_at": _now(), "reason": reason, "sequence": (old or {}).get("sequence", 0) + 1,
                      "lineage": lineage, "previous_entry": (old or {}).get("entry")}
            stamp = record["promoted_at"].replace("-", "").replace(":", "").replace(".", "")
            record["entry"] = f"{stamp}-{record['sequence']:06d}-{version}.json"   # the links history() walks
            entry = self._join(DEPLOYMENTS, deployment, "history", record["entry"])
            self._write_json(entry, record, replace=False)   # history first: a pointer is never unrecorded
            self._write_json(path, record, replace=True)
        return record

    def history(self, deployment: str) -> list[dict]:
        """Every promotion of ``deployment`` that took effect, oldest first.

        A promotion writes its history entry, then the pointer. One that stopped between the
        two (a crash, a lost connection) left an entry the pointer never followed: its sequence
        is past the pointer's, or a later promotion reused that sequence. Such entries are not
        promotions and are left out.
        """
        import pyarrow.fs as pafs

        folder = self._join(DEPLOYMENTS, deployment, "history")
        pointer = self.pointer(deployment)   # validates the name
        if not self._exists(folder):
            return []
        files = sorted(i.path for i in self.fs.get_file_info(pafs.FileSelector(folder))
                       if i.type == pafs.FileType.File and i.base_name.endswith(".json"))
        by_sequence: dict[int, list[dict]] = {}
        for record in filter(None, map(self._read_json, files)):
            by_sequence.setdefault(record["sequence"], []).append(record)
        applied, follows = [], pointer   # walk back from the pointer: each promotion names the one before
        for seq in range(pointer.get("sequence", 0) if pointer else 0, 0, -1):
            entries = by_sequence.get(seq, [])
            named = (follows or {}).get("entry")   # entries written before these links: by their version
            linked = [r for r in entries if named and r.get("entry") == named] or [r for r in entries if r == follows] \
                or [r for r in entries if follows is not None and r["version"] == follows["version"]]
            # among entries of one sequence, only the pointer's links say which took effect; wall-clock
            # stamps from different hosts do not (the latest is a guess, used where a link is missing)
            pick = max(linked or entries, key=lambda r: r.get("promoted_at", ""), default=None)
            if pick is not None:
                applied.append(pick)
            follows = {"version": pick["previous"], "entry": pick.get("previous_entry")} \
                if pick and pick.get("previous") else None
        return applied[::-1]

    def deployments(self) -> list[str]:
        """Names of every deployment with a pointer."""
        import pyarrow.fs as pafs

        folder = self._join(DEPLOYMENTS)
        if not self._exists(folder):
            return []
        return sorted(i.base_name[:-5] for i in self.fs.get_file_info(pafs.FileSelector(folder))
                      if i.type == pafs.FileType.File and i.base_name.endswith(".json"))

    def resolve(self, deployment: str) -> Path:
        """Local path of the artifact serving ``deployment`` (downloaded once from a remote registry)."""
        version = self.current(deployment)
        if version is None:
            raise ConfigError(f"deployment {deployment!r} has no version in registry {self.root}; "
                              f"promote one first (stream-ae models promote VERSION)")
        return self.artifact_path(version)

    def artifact_path(self, version: str) -> Path:
        """Local path of one version's artifact directory."""
        self._check_version(version)
        if self.local:
            return Path(self._join(version))
        import pyarrow.fs as pafs

        cache = Path(self.cache_dir or Path(tempfile.gettempdir()) / "stream-ae-registry-cache")
        target = cache / version
        if not (target / "manifest.json").is_file():   # versions are immutable: a cached copy stays valid
            cache.mkdir(parents=True, exist_ok=True)
            from stream_ae.artifact import MANIFEST_FILE, WEIGHTS_FILE

            staged = cache / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
            staged.mkdir()
            try:
                for name in (WEIGHTS_FILE, MANIFEST_FILE):
                    pafs.copy_files(self._join(version, name), str(staged / name), source_filesystem=self.fs,
                                    destination_filesystem=pafs.LocalFileSystem())
            except OSError as exc:   # a timeout, a missing file: nothing half-copied stays in the cache
                shutil.rmtree(staged, ignore_errors=True)
                raise ArtifactError(f"cannot fetch version {version} from {self.root} into {cache}: {exc}") from exc
            try:
                os.rename(staged, target)
            except OSError:   # another process cached it first
                shutil.rmtree(staged, ignore_errors=True)
        return target
