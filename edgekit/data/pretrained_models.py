"""torch modules of the pretrained zoo entries (edgekit.data.pretrained), importable for pickling."""

from __future__ import annotations

import torch


class SentenceEncoder(torch.nn.Module):
    """A Hugging Face encoder, mean pooling over the unmasked tokens, L2 normalization (sentence-transformers'
    Transformer -> Pooling(mean) -> Normalize, as all-MiniLM-L6-v2's modules.json chains them)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)
