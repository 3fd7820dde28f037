"""Interleaved loader epochs (benchmarks/test_bench_loaders.py's sets and CPU accounting), resize variants side by side; CPU ms per image.

    PYTHONPATH=$PWD python benchmarks/results/cpu_resize_epochs.py [exact,exact-pillow,cv2-old] [opencv-persistent,dali-cpu] [cub-like-500x375,builtin]
"""
import sys, time, tempfile, statistics
sys.path.insert(0, "benchmarks")
import pytest
import test_bench_loaders as B
from wsol_fast.data import transforms, opencv

class MP:  # a tiny monkeypatch
    def __init__(self): self.saved = []
    def setattr(self, m, n, v): self.saved.append((m, n, getattr(m, n))); setattr(m, n, v)
    def undo(self):
        for m, n, v in reversed(self.saved): setattr(m, n, v)
        self.saved = []

root = tempfile.mkdtemp()
class F:  # minimal tmp_path_factory
    def mktemp(self, name): return __import__("pathlib").Path(root)
sets = B.image_sets.__wrapped__(F())
res = {}
RESIZES = sys.argv[1].split(",") if len(sys.argv) > 1 else ("exact", "cv2-old")
PROVIDERS = sys.argv[2].split(",") if len(sys.argv) > 2 else ("opencv-persistent", "dali-cpu")
NAMES = sys.argv[3].split(",") if len(sys.argv) > 3 else ("cub-like-500x375", "builtin")
for rnd in range(3):
    for provider in PROVIDERS:
        for name in NAMES:
            for resize in RESIZES:
                mp = MP()
                if resize == "exact-pillow":
                    mp.setattr(transforms, "BACKEND", "pillow")
                if resize == "cv2-old":
                    for module in (transforms, opencv):
                        mp.setattr(module, "train_crop", B._cv2_train_crop); mp.setattr(module, "eval_resize", B._cv2_eval_resize)
                loader = B._make_loader(provider, *sets[name])
                for _ in loader: pass  # warm-up epoch (workers start)
                t0, c0, n = time.perf_counter(), B._cpu_seconds(), 0
                for batch in loader: n += batch[0].shape[0]
                cpu, wall = B._cpu_seconds() - c0, time.perf_counter() - t0
                res.setdefault((provider, name, resize), []).append((1000 * cpu / n, n / wall))
                if hasattr(loader, "close"): loader.close()
                mp.undo()
                print(rnd, provider, name, resize, "cpu ms/img %.3f  img/s %.1f" % res[(provider, name, resize)][-1], flush=True)
print()
for (p, nm, r), v in res.items():
    print(f"{p:18s} {nm:18s} {r:8s} cpu ms/img median {statistics.median(x for x, _ in v):.3f}  img/s median {statistics.median(y for _, y in v):.1f}")
