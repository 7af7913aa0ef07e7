"""``tiffpipe demo``: a sample multi-page TIFF and a manifest that exercises the pipeline."""

from __future__ import annotations

import contextlib
import os

from pipeline.adapters import storage
from pipeline.errors import OutputExistsError
from pipeline.sample import SamplePage, write_sample

SAMPLE_PAGES = [SamplePage(3000, 4000, 3, "uint8"), SamplePage(2500, 2500, 1, "uint16"),
                SamplePage(1800, 2400, 4, "uint8")]

DEMO_MANIFEST = {
    "defaults": {"tile": 1024, "output_options": {"compression": "zstd", "tile": 512}},
    "jobs": [
        {"input": "sample.tif", "output": "out/blurred.tif",
         "ops": [{"op": "gaussian_blur", "sigma": 2.5}]},
        {"input": "sample.tif", "output": "out/sharpened.jpeg.tif", "pages": [0],
         "ops": [{"op": "unsharp_mask", "sigma": 3, "amount": 1.5}],
         "output_options": {"compression": "jpeg", "quality": 88}},
        {"input": "sample.tif", "output": "out/mask.tif", "pages": [0, 2],
         "ops": [{"op": "to_gray"}, {"op": "median_blur", "ksize": 5},
                 {"op": "dilate", "ksize": 3, "iterations": 2}, {"op": "threshold", "value": 140}],
         "output_options": {"compression": "deflate"}},
    ],
}


def prepare_demo(folder: str) -> str:
    """Write ``folder/sample.tif`` (unless present) and ``folder/manifest.json``; return the
    manifest's path. Demos started together in one folder each write their own temporary
    files: the first sample published is kept (a later one would replace the input of a
    demo already running), the manifest, the same for all, replaced whole."""
    os.makedirs(folder, exist_ok=True)
    sample = os.path.join(folder, "sample.tif")
    if not os.path.exists(sample):
        tmp = storage.temp_output_path(sample)
        try:
            write_sample(tmp, SAMPLE_PAGES, tile=512, compression="zstd")
            # published only if no other demo's is there (a hard link, or a look first on a
            # file system without them)
            storage.publish_file(tmp, sample, replace=False)
        except OutputExistsError:
            pass
        finally:
            with contextlib.suppress(FileNotFoundError):  # (left when another's was kept)
                os.remove(tmp)
    manifest = os.path.join(folder, "manifest.json")
    storage.write_json(manifest, DEMO_MANIFEST)  # replaced whole
    return manifest

