"""One hash over a generated dataset's files (the built-in sets' tests): every path and its bytes under the
images and metadata folders, the manifest excluded."""
import hashlib
import os

from wsol_fast.data import builtin


def digest(root: str) -> str:
    h = hashlib.sha256()
    for base in (builtin.data_root(root), builtin.metadata_root(root)):
        for folder, dirs, files in sorted(os.walk(base)):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()
