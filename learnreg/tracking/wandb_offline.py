"""Read an offline W&B run (the ``run-<id>.wandb`` transaction log) without syncing it.

The file is a LevelDB-style log (32 KiB blocks of checksummed chunks) of wandb's own
protobuf ``Record`` messages. This reads back the run's name and group, its config and
summary, the logged history rows and the artifacts, to check what a run recorded or to inspect one on a machine with no W&B server.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

_BLOCK = 32768
_HEADER = 7  # magic ":W&B" + 2-byte version + 1 byte


def _chunks(data: bytes):
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        if pos % _BLOCK + 7 > _BLOCK:  # the rest of a block too small for a header: padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break  # a chunk wandb-core is still writing
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            yield pending + chunk
            pending = b""


def read_run(path: str | Path) -> dict:
    """Config, history rows and artifacts of an offline run.

    Args:
        path: a ``.wandb`` file, an ``offline-run-*`` folder, or a folder containing one
            (a learnreg run directory).

    Returns:
        ``{"name": str, "group": str, "config": dict, "summary": dict, "history": [row
        dicts], "artifacts": [{"name", "type", "files"}]}``, merged over every segment of a
        resumed run (the summary holds the last value written under each key).
    """

    path = Path(path)
    segments = [path]
    if path.is_dir():  # a resumed run has one segment per process, oldest first
        segments = sorted(
            path.rglob("run-*.wandb"), key=lambda p: (p.parent.name, p.stat().st_mtime)
        )
        if not segments:
            raise FileNotFoundError(f"no offline W&B run under {path}")
    out: dict = {
        "name": None,
        "group": None,
        "config": {},
        "summary": {},
        "history": [],
        "artifacts": [],
    }
    for segment in segments:
        _read_segment(segment, out)
    return out


def wait_until_complete(path: str | Path, timeout: float = 60.0) -> bool:
    """Wait until an offline run's transaction log ends with its ``exit`` record.

    ``wandb.Run.finish()`` can return before wandb-core has flushed the log: on a loaded
    machine a run read back right after ``finish()`` was seen holding only its 7-byte
    header. Call this after ``finish()`` before reading the file (or copying it away).

    Args:
        path: the run's ``run-<id>.wandb`` file.
        timeout: seconds to wait at most.

    Returns:
        Whether the exit record was seen in time.
    """
    from google.protobuf.message import DecodeError

    path, deadline = Path(path), time.monotonic() + timeout
    while True:
        try:
            if path.exists() and any(kind == "exit" for kind, _ in _records(path)):
                return True
        except DecodeError:
            pass  # read halfway through a record being written: look again
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _records(path: Path):
    """``(kind, record)`` for every wandb ``Record`` in the log, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    for chunk in _chunks(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(chunk)
        yield record.WhichOneof("record_type"), record


def _read_segment(path: Path, out: dict) -> None:
    for kind, record in _records(path):
        if kind == "run":
            out["config"].update(_config(record.run.config))
            out["name"] = record.run.display_name or out["name"]
            out["group"] = record.run.run_group or out["group"]
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"]["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
        elif kind == "config":
            out["config"].update(_config(record.config))
        elif kind == "history":
            out["history"].append(
                {
                    "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                    for i in record.history.item
                }
            )
        elif kind == "artifact":
            a = record.artifact
            out["artifacts"].append(
                {"name": a.name, "type": a.type, "files": [c.path for c in a.manifest.contents]}
            )


def _config(config) -> dict:
    values = {}
    for item in config.update:
        key = "/".join(item.nested_key) or item.key
        value = json.loads(item.value_json)
        values[key] = (
            value.get("value", value)
            if isinstance(value, dict) and set(value) <= {"value", "desc"}
            else value
        )
    return values
