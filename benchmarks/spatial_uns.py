"""Benchmark the `uns["spatial"]` block every spatial .h5ad gets: thumbnail read + hires/lowres images.

It runs once per slide in `emo predict` and once per section in `emo expression spatial` / spot
predictions, so it should cost a small fraction of predicting the slide. Images: the real her2st C4
photo (~92 Mpx JPEG, the worst case: no pyramid) and CMU-1-Small-Region.svs (pyramidal).
Last line: RESULT her2st_s=<seconds> svs_s=<seconds> hires_px=<longest side>.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("EMO_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _time(path: Path, repeats: int = 3) -> tuple[float, int]:
    from emo.slides.spatial_uns import image_spatial_uns

    best, side = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        lib = image_spatial_uns("s", path, None, 100.0)["s"]
        best = min(best, time.perf_counter() - t0)
        side = max(lib["images"]["hires"].shape[:2])
    return best, side


def main() -> None:
    her2st, svs = DATA / "her2st" / "images" / "C4.jpg", DATA / "slides" / "CMU-1-Small-Region.svs"
    missing = [str(p) for p in (her2st, svs) if not p.exists()]
    if missing:
        sys.exit(f"missing benchmark images: {', '.join(missing)} (set EMO_SHARED_DATA)")
    her2st_s, side = _time(her2st)
    svs_s, _ = _time(svs)
    print(f"her2st C4.jpg: {her2st_s:.2f}s; CMU-1-Small-Region.svs: {svs_s:.2f}s (best of 3)")
    print(f"RESULT her2st_s={her2st_s:.3f} svs_s={svs_s:.3f} hires_px={side}")


if __name__ == "__main__":
    main()
