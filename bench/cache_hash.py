"""What proving a cache entry's content costs at SegTHOR size (issue 30, item 2).

Hashes, side by side in one process, (a) a raw SegTHOR-sized volume (512 x 512 x 200, float32
and int16) and (b) a cache entry as segtune writes it for SegTHOR at 1.5 x 1.5 x 2.5 mm
(image 1 x 322 x 322 x 192 float16, label uint8), read back from its .npy files through
memory maps (warm page cache, as on every use after the first), with the standard library's
hashes and two peers (xxhash, blake3: the `bench` extra). Also times what a check on every
use costs without hashing (open the memory maps, compare shapes, dtypes and sizes).

    python bench/cache_hash.py --repeats 7 --out bench/cache_hash.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np


def _hashers() -> dict[str, object]:
    out = {name: (lambda b, n=name: hashlib.new(n, b).hexdigest())
           for name in ("md5", "sha1", "sha256", "blake2b")}
    out["crc32 (zlib)"] = lambda b: zlib.crc32(b)
    try:
        import xxhash

        out["xxh3_128 (xxhash)"] = lambda b: xxhash.xxh3_128_hexdigest(b)
    except ImportError:
        pass
    try:
        import blake3

        out["blake3"] = lambda b: blake3.blake3(b).hexdigest()
        out["blake3 (4 threads)"] = lambda b: blake3.blake3(b, max_threads=4).hexdigest()
    except ImportError:
        pass
    return out


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm: page cache, first-call set-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    raw = rng.normal(0, 300, size=(512, 512, 200)).astype(np.float32)
    image = rng.normal(0, 0.3, size=(1, 322, 322, 192)).astype(np.float16)
    label = rng.integers(0, 5, size=(1, 322, 322, 192), dtype=np.uint8)
    return {"raw float32 512x512x200": raw, "raw int16 512x512x200": raw.astype(np.int16),
            "entry image float16 322x322x192": image, "entry label uint8 322x322x192": label}


def _structure_check(folder: Path) -> None:
    """Open both files as memory maps and compare shape, dtype and size: the check on
    every use."""
    for name, dtype in (("image.npy", np.float16), ("label.npy", np.uint8)):
        arr = np.load(folder / name, mmap_mode="r")
        assert arr.dtype == dtype and arr.shape == (1, 322, 322, 192)
        assert (folder / name).stat().st_size >= arr.nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    arrays = _arrays(np.random.default_rng(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.save(folder / "image.npy", arrays["entry image float16 322x322x192"])
        np.save(folder / "label.npy", arrays["entry label uint8 322x322x192"])
        maps = {"entry image+label from .npy memory maps":
                lambda: [np.load(folder / n, mmap_mode="r") for n in ("image.npy", "label.npy")]}
        rows.append(("open + shape/dtype/size check (no hash)", 0,
                     _time(lambda: _structure_check(folder), args.repeats), "-"))
        for method, fn in _hashers().items():
            for what, arr in arrays.items():
                view = memoryview(np.ascontiguousarray(arr)).cast("B")
                rows.append((what, arr.nbytes, _time(lambda v=view, f=fn: f(v), args.repeats),
                             method))
            opened = maps["entry image+label from .npy memory maps"]
            size = sum(a.nbytes for a in opened())
            rows.append(("entry image+label from .npy memory maps", size,
                         _time(lambda f=fn, o=opened: [f(memoryview(a).cast("B")) for a in o()],
                               args.repeats), method))
    results = []
    print(f"{'method':<22} {'data':<42} {'MB':>6} {'median s':>9} {'min-max s':>15} {'GB/s':>6}")
    for what, size, times, method in rows:
        med = statistics.median(times)
        rate = size / med / 1e9 if size else float("nan")
        print(f"{method:<22} {what:<42} {size / 1e6:6.0f} {med:9.4f} "
              f"{min(times):7.4f}-{max(times):.4f} {rate:6.2f}")
        results.append({"method": method, "data": what, "bytes": size, "median_s": med,
                        "min_s": min(times), "max_s": max(times), "n": len(times)})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
