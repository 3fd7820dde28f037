"""Parity of the loaders' resize with torchvision Resize on a PIL image (wsolevaluation's), per photo and size,
and of both loaders end to end: PYTHONPATH=$PWD python benchmarks/results/cpu_resize_parity.py
"""
import os, sys, tempfile
import numpy as np, torch, cv2
from PIL import Image
from torchvision import transforms as T
import skimage.data as sd
import nvidia.dali.fn as fn, nvidia.dali.types as types
from nvidia.dali import pipeline_def
from wsol_fast.data import transforms
from wsol_fast.data.opencv import OpenCVLoader
from wsol_fast.data.dali import DaliLoader
from wsol_fast.data.images import IMAGENET_MEAN, IMAGENET_STD

photos = {"astronaut 512x512": sd.astronaut(), "coffee 400x600": sd.coffee(), "chelsea 300x451": sd.chelsea(),
          "rocket 427x640": sd.rocket(), "camera 512x512 gray": sd.camera()}
photos["coffee 600x400 (portrait)"] = np.ascontiguousarray(sd.coffee().transpose(1, 0, 2))
photos["chelsea 150x183"] = np.asarray(Image.fromarray(sd.chelsea()).resize((183, 150), Image.BOX))
sizes = [(224, 224), (256, 256), (73, 73), (64, 64), (300, 200), (700, 900)]

def dali_resize(img, h, w):
    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def p():
        x = fn.external_source(source=lambda: [img if img.ndim == 3 else img[..., None]], batch=True)
        return fn.resize(x, resize_x=w, resize_y=h, interp_type=types.INTERP_LINEAR, antialias=True)
    pp = p(); pp.build(); out = np.asarray(pp.run()[0][0])
    return out if img.ndim == 3 else out[..., 0]

def stat(a, b):
    d = np.abs(a.astype(int) - b.astype(int)); return f"{d.mean():.3f} / {d.max()}"

print("| photo | size (h x w) | exact C++ | Pillow backend | cv2.INTER_LINEAR (before) | DALI fn.resize antialias |")
print("|---|---|---|---|---|---|")
for name, img in photos.items():
    for h, w in sizes:
        ref = np.asarray(T.Resize((h, w))(Image.fromarray(img)))
        print(f"| {name} | {h} x {w} | {stat(transforms.resize(img, h, w, backend='cpp'), ref)} | "
              f"{stat(transforms.resize(img, h, w, backend='pillow'), ref)} | "
              f"{stat(cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR), ref)} | {stat(dali_resize(img, h, w), ref)} |")

# Both loaders end to end on the photos saved as JPEG (gray as a grayscale JPEG), uint8 levels recovered
# from the normalised tensors.
root = tempfile.mkdtemp(); os.makedirs(f"{root}/DS")
ids = []
for k, (name, img) in enumerate(photos.items()):
    ids.append(f"{k}.jpg"); Image.fromarray(img).save(f"{root}/DS/{ids[-1]}", quality=90)
mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1); std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
def levels(x): return (x * std + mean) * 255
print()
print("| loader | photo | eval 224: mean / max levels | train 256 -> crop 224: mean / max |")
print("|---|---|---|---|")
for kind in ("opencv", "dali"):
    mk = (lambda **kw: OpenCVLoader(ids, list(range(len(ids))), root, "DS", num_workers=0, device="cpu", **kw)) if kind == "opencv" else \
         (lambda **kw: DaliLoader(ids, list(range(len(ids))), root, "DS", num_threads=2, device="cpu", **kw))
    ev = {i: x for a, _, b in mk(train=False, batch_size=2, crop_size=224) for i, x in zip(b, a)}
    tl = mk(train=True, batch_size=1, resize_size=256, crop_size=224, seed=0); tl.set_epoch(0)
    oy, ox, fl = transforms.augment_draws(0, 0, 0, tl.sampler.per_rank, 256, 224)
    tr = {}
    for j, (a, _, b) in enumerate(tl):
        tr[b[0]] = (a[0], oy[j], ox[j], fl[j])
    for k, name in enumerate(photos):
        i = ids[k]
        with Image.open(f"{root}/DS/{i}") as im: rgb = im.convert("RGB")
        ref = np.asarray(T.Resize((224, 224))(rgb)).transpose(2, 0, 1)
        e = (levels(ev[i]) - torch.from_numpy(ref.astype(np.float32))).abs()
        x, y0, x0, f = tr[i]
        r2 = np.asarray(T.Resize((256, 256))(rgb))[y0:y0 + 224, x0:x0 + 224]
        r2 = r2[:, ::-1] if f else r2
        t2 = (levels(x) - torch.from_numpy(np.ascontiguousarray(r2.transpose(2, 0, 1)).astype(np.float32))).abs()
        print(f"| {kind} | {name} | {e.mean():.4f} / {e.max():.4f} | {t2.mean():.4f} / {t2.max():.4f} |")
