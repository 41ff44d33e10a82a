"""Sharded I/O for offline jobs: float embedding readers, row validation, code shards + manifest.

- ``readers``: one ``Source`` per input shard (.npy, .fvecs/.bvecs, parquet), random-access
  ``read(start, stop, chunk_rows)`` yielding float32 chunks of at most ``chunk_rows`` rows.
- ``inputs``: a path, directory or glob (or a list of them) -> the sorted list of sources.
- ``validate``: NaN/inf rows refused (naming shard and row) or skipped and counted.
- ``vecs``: the ANN-benchmark .fvecs/.bvecs/.ivecs format, read by row range.
- ``manifest`` / ``codeshards``: the code-shard directory format (docs/FORMAT.md,
  "Code shards and manifest").
"""

from .codeshards import CodeShards, write_code_shard
from .inputs import InputError, open_inputs
from .manifest import MANIFEST_NAME, Manifest, ShardEntry
from .readers import Chunk, Source, open_source
from .validate import BadRowError, check_rows
from .vecs import read_vecs, write_vecs

__all__ = ["BadRowError", "Chunk", "CodeShards", "InputError", "MANIFEST_NAME", "Manifest",
           "ShardEntry", "Source", "check_rows", "open_inputs", "open_source", "read_vecs",
           "write_code_shard", "write_vecs"]
