"""The message contracts as files: JSON Schemas generated from the codec's Structs.

The Structs in :mod:`stream_ae.stream.codec` are the one definition; ``schemas/*.json`` are
generated from them and a test fails when they drift. Command line::

    python -m stream_ae.stream.contracts --write-schemas schemas/   # after changing a Struct
    python -m stream_ae.stream.contracts --check schemas/           # exit 1 when out of date
    python -m stream_ae.stream.contracts --bench                    # decode cost per reading

The consumer's input policy: every record that is not scored goes to the dead-letter topic
with its reason, the original bytes and its source topic/partition/offset; the consumer
never raises on input.

* malformed JSON or UTF-8, wrong types, unknown top-level fields, ``NaN``/``Infinity`` tokens,
  values outside float32, timestamps outside 1970..2262 or more than ``input.max_future_s``
  ahead of the consumer's clock, oversized records, reserved entity ids: the codec's reasons
  (``codec.py``);
* a channel the model expects is absent from ``values``: ``missing_channel`` (a ``null``
  value is a reading that could not be measured: it is forward-filled by the windower
  for up to ``max_fill`` rows, then breaks the window sequence);
* a channel the model does not know: ``unknown_channel`` (the model would silently ignore it);
* a timestamp equal to the entity's last (``duplicate``) or older (``out_of_order``):
  dead-lettered, or only counted when ``input.late_policy = "drop"``.
"""
from __future__ import annotations

import json
from pathlib import Path

import msgspec

from stream_ae.stream.codec import Alert, DeadLetter, Reading, ReadingDecoder, encode_reading

SCHEMAS: dict[str, type] = {"reading.v1.json": Reading, "alert.v1.json": Alert,
                            "dead_letter.v1.json": DeadLetter}


def schema_documents() -> dict[str, str]:
    """File name -> JSON Schema text generated from the Structs (what ``schemas/`` holds)."""
    docs = {}
    for name, struct in SCHEMAS.items():
        body = msgspec.json.schema(struct)
        doc = {"$schema": "https://json-schema.org/draft/2020-12/schema",
               "$id": f"https://stream-ae.dev/schemas/{name}", **body}
        docs[name] = json.dumps(doc, indent=2) + "\n"
    return docs


def stale_schemas(directory: str | Path) -> list[str]:
    """Names of schema files in ``directory`` that are missing or differ from the Structs."""
    root = Path(directory)
    return [name for name, text in schema_documents().items()
            if not (root / name).is_file() or (root / name).read_text() != text]


def write_schemas(directory: str | Path) -> list[Path]:
    """Write every schema file into ``directory``; returns the paths written."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in schema_documents().items():
        (root / name).write_text(text)
        paths.append(root / name)
    return paths


def _bench(n: int = 100_000) -> dict[str, float]:
    """µs per reading: json.loads alone vs. decode + validate + ts conversion."""
    import time
    values = {f"ch{i}": 0.125 * i for i in range(8)}
    blobs = [encode_reading(Reading(f"pump-{i % 50}", 1_700_000_000_000 + i, values))
             for i in range(n)]
    t0 = time.perf_counter()
    for b in blobs:
        json.loads(b)
    t1 = time.perf_counter()
    ok, _ = ReadingDecoder().decode(blobs)
    t2 = time.perf_counter()
    return {"bytes": len(blobs[0]), "json_loads_us": (t1 - t0) / n * 1e6,
            "decode_validate_us": (t2 - t1) / n * 1e6, "decoded": len(ok)}


def main(argv: list[str] | None = None) -> int:
    """``python -m stream_ae.stream.contracts --write-schemas DIR | --check DIR | --bench``."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m stream_ae.stream.contracts")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write-schemas", metavar="DIR", help="generate the JSON Schema files")
    group.add_argument("--check", metavar="DIR", help="exit 1 if the files differ from the Structs")
    group.add_argument("--bench", action="store_true", help="print decode cost per reading")
    args = parser.parse_args(argv)
    if args.write_schemas:
        for path in write_schemas(args.write_schemas):
            print(path)
    elif args.check:
        stale = stale_schemas(args.check)
        if stale:
            print(f"out of date in {args.check}: {', '.join(stale)}; run "
                  f"python -m stream_ae.stream.contracts --write-schemas {args.check}")
            return 1
    else:
        print(json.dumps(_bench()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
