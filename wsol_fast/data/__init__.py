"""Data, in layers: `images` (decoding, the image checks, BadImageError, the normalisation constants) and
`sampler` at the bottom; `base` (what both loaders share: split, order, sharding, resume) with the
loaders on it, `opencv` (the default) and `dali` (optional: NVIDIA DALI); `metadata` (the wsolevaluation
format) and the generated datasets (`generated`, their registry, over `builtin`, `builtin_parts`,
`builtin_masks`); on top `pipeline`, what a run gets from all of them (`prepare_data`).
`python -m wsol_fast.data` checks a dataset or generates a built-in one. Importing this package imports
no DALI, only what train and evaluate use."""
from .images import BadImageError
from .pipeline import RunData, prepare_data

__all__ = ["BadImageError", "RunData", "prepare_data"]
