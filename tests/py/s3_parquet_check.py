#!/usr/bin/env python3
"""Independent reader of the pipeline's Parquet output in an S3 bucket (run with
$IOTPIPE_TEST_PYTHON).

    s3_parquet_check.py s3://BUCKET/PREFIX

Lists every *.parquet object under the prefix with pyarrow's own S3 client
(pyarrow.fs.S3FileSystem; endpoint from AWS_ENDPOINT_URL, e.g. a moto server, credentials
and region from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION), copies them into a
temporary directory and checks them exactly as parquet_check.py does (same JSON on stdout,
same exit status; distinct readings counted by DuckDB and by pyarrow). Nothing of the
pipeline's Rust code is involved.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parquet_check  # noqa: E402


def s3fs() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {
        "access_key": os.environ.get("AWS_ACCESS_KEY_ID"),
        "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
        "region": os.environ.get("AWS_REGION", "us-east-1"),
    }
    if endpoint:
        u = urlparse(endpoint)
        kwargs["endpoint_override"] = u.netloc
        kwargs["scheme"] = u.scheme or "http"
    return pafs.S3FileSystem(**kwargs)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].startswith("s3://"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    base = argv[1][len("s3://"):].rstrip("/")
    fs = s3fs()
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    objects = [i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
    with tempfile.TemporaryDirectory() as tmp:
        for path in objects:
            dest = Path(tmp) / path[len(base):].lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(path) as src, open(dest, "wb") as out:
                out.write(src.read())
        return parquet_check.main([argv[0], tmp])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
