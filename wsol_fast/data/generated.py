"""The generated datasets, in one registry: `GENERATED`, name -> what a run and the commands need to know of
each (how it is generated, its cache folder, whether it is scored on boxes or masks, its classes, a line
for --help). Whatever treats a generated set apart reads it here: config.resolve (the CPU profile), train's
`--dataset` check and help, prepare_data (generated on first use), the train loader's partial-batch rule,
`python -m wsol_fast.data builtin` and ablate (the shared warm-up). A new generated set is its generator
and one entry here.

    builtin        digits on cluttered photo backgrounds, one box each         builtin.py
    builtin-parts  a small discriminative head on a weakly informative body    builtin_parts.py, via builtin.py
    builtin-masks  the digits with instance masks in OpenImages' layout (PxAP) builtin_masks.py

All three are drawn with drawing.py, written in the wsolevaluation layout under one root
(`<root>/images/<name>/...`, `<root>/metadata/<name>/<split>/`) and cached at `$WSOL_FAST_CACHE/<name>`
(else `./.wsol_fast_cache/<name>`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import builtin, builtin_masks, builtin_parts

BOXES, MASKS = "boxes", "masks"     # what a set's val / test splits are scored on: MaxBoxAccV2 or PxAP


@dataclass(frozen=True)
class GeneratedDataset:
    name: str                          # --dataset NAME, and its folder under the roots
    generate: Callable[..., str]       # (root=None, seed=0, progress=True, **sizes) -> the metadata root
    defaults: dict                     # the sizes `generate` takes, with their defaults
    annotation: str                    # BOXES (MaxBoxAccV2) or MASKS (PxAP)
    num_classes: int
    part_boxes: bool                   # part_boxes.txt beside localization.txt (a discriminative part's box)
    summary: str                       # a few words, for --help

    @property
    def has_masks(self) -> bool:
        return self.annotation == MASKS

    def default_root(self) -> str:
        """`$WSOL_FAST_CACHE/<name>`, else `./.wsol_fast_cache/<name>` (read at each call)."""
        return builtin.default_root(self.name)

    def metadata_root(self, root: str) -> str:
        """Metadata at `<metadata_root(root)>/<name>/<split>/`."""
        return builtin.metadata_root(root)

    def data_root(self, root: str) -> str:
        """Images (and a mask set's masks, beside them) at `<data_root(root)>/<name>/<image_id>`."""
        return builtin.data_root(root)


# The generators are looked up when called (not bound here), so a test that replaces one sees its calls.
def _digits(root=None, seed=0, progress=True, **sizes) -> str:
    return builtin.generate(root, seed=seed, progress=progress, dataset=builtin.DATASET, **sizes)


def _parts(root=None, seed=0, progress=True, **sizes) -> str:
    return builtin.generate(root, seed=seed, progress=progress, dataset=builtin_parts.DATASET, **sizes)


def _masks(root=None, seed=0, progress=True, **sizes) -> str:
    return builtin_masks.generate(root, seed=seed, progress=progress, **sizes)


GENERATED: dict[str, GeneratedDataset] = {g.name: g for g in (
    GeneratedDataset(builtin.DATASET, _digits, builtin.DEFAULTS, BOXES, builtin.NUM_CLASSES, False, "digits"),
    GeneratedDataset(builtin_parts.DATASET, _parts, builtin.DEFAULTS, BOXES, builtin.NUM_CLASSES, True,
                     "a small discriminative head on a weakly informative body"),
    GeneratedDataset(builtin_masks.DATASET, _masks, builtin_masks.DEFAULTS, MASKS, builtin_masks.NUM_CLASSES,
                     False, "digits with instance masks in OpenImages' layout, scored by PxAP"),
)}


def is_generated(dataset: str) -> bool:
    """Whether `dataset` names a generated set (the CPU profile, generated on first use)."""
    return dataset in GENERATED


def box_sets() -> tuple[str, ...]:
    """The generated sets scored on boxes (MaxBoxAccV2), in registry order."""
    return tuple(name for name, g in GENERATED.items() if not g.has_masks)


def help_text() -> str:
    """'builtin (digits), builtin-parts (...) or builtin-masks (...)': the sets for a flag's help."""
    items = [f"{name} ({g.summary})" for name, g in GENERATED.items()]
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else items[0]
