"""Merge's memory against the output's size, on S3 (moto's server in its own process).

    .venv/bin/python bench/merge_memory.py [--mpx 6 50] [--dir DIR]

For each size: writes a noise RGB page of about that many megapixels (noise does not
compress: the output is ~3 MB per Mpx), runs a tiffpipe job with input, work and output on
the server (keeping the work), then runs the job's merge again in this process under
tracemalloc (the S3 client made beforehand), with an audit hook counting the local files it
opens for writing. Prints the
output's size, merge's traced peak, the files written and the parts it copied.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [p for p in (ROOT,) if p not in sys.path]


def _server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto's server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mpx", type=float, nargs="+", default=[6, 50])
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    folder = args.dir or tempfile.mkdtemp(prefix="tiffpipe-merge-memory-")
    proc, endpoint = _server()
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        import boto3
        import numpy as np
        import tifffile

        from pipeline.adapters import segments, storage
        from pipeline.core.events import MergeEvent
        from pipeline.steps import layout
        from pipeline.steps import merge as merge_mod
        from pipeline.steps.common import load_plan

        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        copies: list[int] = []
        real_copy = segments._copy_part
        segments._copy_part = lambda *a: (copies.append(a[3].size), real_copy(*a))[1]
        written: list[str] = []
        watching = [False]

        def hook(event: str, hargs: tuple) -> None:
            if watching[0] and event == "open" and isinstance(hargs[0], str | bytes):
                mode, flags = hargs[1] or "", hargs[2] or 0
                if any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR):
                    written.append(str(hargs[0]))

        sys.addaudithook(hook)
        storage.s3_client().list_buckets()  # boto3's client and models, once, outside
        for n, mpx in enumerate(args.mpx):
            side = int((mpx * 1e6) ** 0.5)
            src = os.path.join(folder, f"noise{n}.tif")
            rng = np.random.default_rng(n)
            tifffile.imwrite(src, rng.integers(0, 256, (side, side, 3), np.uint8),
                             tile=(512, 512), photometric="rgb", metadata=None)
            s3.upload_file(src, "bench", f"in/{n}.tif")
            s3.put_object(Bucket="bench", Key=f"m{n}.json", Body=json.dumps({"jobs": [
                {"input": f"s3://bench/in/{n}.tif", "output": f"s3://bench/out/{n}.tif"}]}))
            work = f"s3://bench/work{n}/"
            subprocess.run([sys.executable, "-m", "pipeline.cli", "run", f"s3://bench/m{n}.json",
                            "--work", work, "--keep-work", "--quiet", "--workers", "2",
                            "--report", os.path.join(folder, f"r{n}.json")],
                           cwd=ROOT, check=True, env=dict(os.environ))
            run_key = next(o["Key"] for o in s3.list_objects_v2(
                Bucket="bench", Prefix=f"work{n}/")["Contents"] if o["Key"].endswith("run.json"))
            job_work = layout.job_dir(json.loads(s3.get_object(
                Bucket="bench", Key=run_key)["Body"].read())["work"], 0)
            load_plan.cache_clear()
            copies.clear()
            written.clear()
            tracemalloc.start()
            watching[0] = True
            started = time.perf_counter()
            result = merge_mod.merge(MergeEvent(layout.plan_file(job_work)))
            seconds = time.perf_counter() - started
            watching[0] = False
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(f"{mpx:g} Mpx: output {result['output_bytes'] / 1e6:.1f} MB, merge peak "
                  f"{peak / 1e6:.1f} MB (traced), {len(written)} local files written, "
                  f"{len(copies)} parts copied ({sum(copies) / 1e6:.1f} MB), {seconds:.1f} s")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
