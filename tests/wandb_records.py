"""Read the records of an offline W&B run file (``run-*.wandb``) to check what a run logged.

The file is a LevelDB-style log: a 7-byte file header (":W&B", magic 0xBEE1, version), then 32 KiB
blocks of chunks, each with a 7-byte header (crc32 uint32, length uint16, type uint8; types full=1,
first=2, middle=3, last=4); a chunk never spans a block boundary (tails under 7 bytes are padding).
Each reassembled payload is a serialized ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7


def iter_payloads(path: str | Path):
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run file (header {ident!r}, magic {magic:#x})")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:
            pos += left  # zero padding up to the next block
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def logged_keys(path: str | Path) -> dict[str, set[str]]:
    """{'history': keys logged with step data, 'summary': summary keys, 'config': top-level config keys}."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = {"history": set(), "summary": set(), "config": set(), "files": set()}
    for payload in iter_payloads(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"] |= {i.key or "/".join(i.nested_key) for i in rec.history.item}
        elif kind == "summary":
            out["summary"] |= {i.key or "/".join(i.nested_key) for i in rec.summary.update}
        elif kind == "config":
            out["config"] |= {i.key or "/".join(i.nested_key) for i in rec.config.update}
        elif kind == "run":
            out["config"] |= {i.key or "/".join(i.nested_key) for i in rec.run.config.update}
        elif kind == "files":
            out["files"] |= {f.path for f in rec.files.files}
    return out


def run_record(path: str | Path) -> dict:
    """{'group', 'name', 'id', 'tags', 'config': {key: value}, 'summary': {key: value}} of an offline run file (JSON
    values decoded)."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    out = {"group": None, "name": None, "id": None, "tags": [], "config": {}, "summary": {}}

    def items(updates):
        return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in updates}

    for payload in iter_payloads(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["group"], out["name"], out["id"] = rec.run.run_group, rec.run.display_name, rec.run.run_id
            out["tags"] = list(rec.run.tags)
            out["config"].update(items(rec.run.config.update))
        elif kind == "config":
            out["config"].update(items(rec.config.update))
        elif kind == "summary":
            out["summary"].update(items(rec.summary.update))
    return out


def artifacts(path: str | Path) -> list[dict]:
    """Artifacts recorded in an offline run file: [{'name', 'type', 'files': {path in artifact: staged local path}}].

    Since wandb 0.19 a logged ``wandb.Table`` goes into a ``run_table`` artifact (its JSON and its images); offline,
    the files wait in the staging folder (``$WANDB_DATA_DIR/artifacts/staging``) until ``wandb sync`` uploads them.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for payload in iter_payloads(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        if rec.WhichOneof("record_type") == "artifact":
            a = rec.artifact
            out.append({"name": a.name, "type": a.type, "files": {e.path: e.local_path for e in a.manifest.contents}})
    return out


def wait_complete(path: str | Path, timeout: float = 60.0) -> Path:
    """Wait until the run file holds its closing ``exit`` record and return its path.

    ``run.finish()`` in this process returns once the run is closed, but the W&B service may still be flushing
    the offline file; a test that reads the file right away must wait for the end of it.
    """
    import time

    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout
    while True:
        try:
            kinds = {pb.Record.FromString(p).WhichOneof("record_type") for p in iter_payloads(path)}
        except (ValueError, OSError, struct.error, DecodeError):  # a record still being written reads as corrupt
            kinds = set()
        if "exit" in kinds:
            return Path(path)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} has no exit record after {timeout} s")
        time.sleep(0.2)
