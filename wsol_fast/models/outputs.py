"""What a WSOL model hands to the losses: one `BlockRecord` per attention block and the `WSOLOutput` of a
training forward. Plain records with no model code, so the blocks (adl.py, icl.py), the model (base.py)
and the losses all import them from here without importing each other."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class BlockRecord:
    """What one attention block hands to the losses (training only). Nothing is kept in module state.

    attention:  [B, h, w] the raw attention map A (non-local or channel mean), with its graph.
    embeddings: [B, 3, D] e_fg, e_dfg, e_bg (ICL with the contrastive loss), else None.
    counts:     [B, 3] int64 sizes of the fg, dfg, bg masks (ICL), else None.
    drop_mask:  [B, h, w] bool, the hard mask used when the drop branch was drawn.
    dropped:    [B] bool, which samples got the drop mask (all or none unless per_sample_drop).
    """
    attention: Tensor
    embeddings: Tensor | None = None
    counts: Tensor | None = None
    drop_mask: Tensor | None = None
    dropped: Tensor | None = None

    @property
    def e_fg(self) -> Tensor | None:
        return None if self.embeddings is None else self.embeddings[:, 0]

    @property
    def e_dfg(self) -> Tensor | None:
        return None if self.embeddings is None else self.embeddings[:, 1]

    @property
    def e_bg(self) -> Tensor | None:
        return None if self.embeddings is None else self.embeddings[:, 2]


@dataclass
class WSOLOutput:
    """Training-mode output of a WSOL model. `blocks` are in network order; the last is the L_fc reference.
    `use_contrastive` / `use_fc` say which auxiliary losses this model's config asks for."""
    logits: Tensor
    blocks: list[BlockRecord] = field(default_factory=list)
    use_contrastive: bool = False
    use_fc: bool = False
