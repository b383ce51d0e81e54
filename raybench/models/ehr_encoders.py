"""EHR time-series encoders: ``[B, T, F]`` + lengths -> ``[B, hidden]`` feature.

Both encoders expose ``forward(x, lengths) -> [B, out_dim]`` and
``forward_steps(x, lengths) -> (steps [B, T', out_dim], lengths')`` for fusion methods that
need per-step outputs (padded steps of ``steps`` are zero for the LSTM).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from raybench.models.base import ModelConfigError

__all__ = [
    "EHR_ENCODERS",
    "EHR_LSTM_HPARAMS",
    "EHR_TRANSFORMER_HPARAMS",
    "EHR_HPARAMS",
    "EHR_SEARCH_SPACE",
    "LSTMEncoder",
    "TransformerEncoder",
    "build_ehr_encoder",
    "clamp_lengths",
    "valid_step_mask",
]

EHR_ENCODERS = ("lstm", "transformer")
#: Anchors (MedFuse/MedMod): hidden 256, dropout 0.3, 2 LSTM layers.
EHR_LSTM_HPARAMS: dict[str, Any] = {
    "hidden": 256,
    "ehr_layers": 2,
    "dropout": 0.3,
    "bidirectional": False,
}
EHR_TRANSFORMER_HPARAMS: dict[str, Any] = {
    "hidden": 256,
    "ehr_layers": 2,
    "dropout": 0.3,
    "nhead": 4,
    "max_len": 512,
}
#: For fusion methods whose EHR encoder is selectable (``nhead``/``max_len`` only matter for
#: the transformer, ``bidirectional`` only for the LSTM).
EHR_HPARAMS: dict[str, Any] = {
    "ehr_encoder": "lstm",
    **EHR_LSTM_HPARAMS,
    **EHR_TRANSFORMER_HPARAMS,
}
EHR_SEARCH_SPACE: dict[str, dict] = {
    "hidden": {"choice": [128, 256, 512]},
    "ehr_layers": {"choice": [1, 2, 3]},
    "dropout": {"uniform": [0.0, 0.5]},
}


def clamp_lengths(lengths: torch.Tensor, max_steps: int) -> torch.Tensor:
    """Lengths as int64 clamped to ``[1, max_steps]``."""
    return lengths.to(torch.long).clamp(min=1, max=max_steps)


def valid_step_mask(lengths: torch.Tensor, max_steps: int) -> torch.Tensor:
    """Bool ``[B, max_steps]``: True for valid (non-padded) steps."""
    steps = torch.arange(max_steps, device=lengths.device)
    return steps[None, :] < lengths[:, None]


class LSTMEncoder(nn.Module):
    """Linear input projection -> (bi)LSTM -> hidden state at the last valid step.

    Padded steps never enter the recurrence (``pack_padded_sequence``), so values beyond
    ``ehr_lengths`` cannot change the output. With ``bidirectional`` each direction has
    ``hidden // 2`` units and the feature is the concatenation of the last forward state and
    the backward state at step 0, so ``out_dim == hidden`` either way.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.3,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ModelConfigError(f"LSTM needs ehr_layers >= 1, got {layers}")
        if bidirectional and hidden % 2:
            raise ModelConfigError(f"bidirectional LSTM needs an even hidden size, got {hidden}")
        self.bidirectional = bool(bidirectional)
        self.proj = nn.Linear(in_features, hidden)
        self.lstm = nn.LSTM(
            hidden,
            hidden // 2 if bidirectional else hidden,
            num_layers=layers,
            dropout=dropout if layers > 1 else 0.0,
            batch_first=True,
            bidirectional=self.bidirectional,
        )
        self.out_dim = hidden
        # MedFuse's LSTM init: Xavier input weights, orthogonal recurrent weights, zero biases.
        for name, param in self.lstm.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(param)
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(param)
            else:
                nn.init.zeros_(param)

    def forward_steps(
        self, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step outputs ``[B, T, hidden]`` (zeros at padded steps) and last ``[B, hidden]``."""
        total = x.shape[1]
        lengths = clamp_lengths(lengths, total)
        packed = pack_padded_sequence(
            self.proj(x), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, (h_n, _) = self.lstm(packed)
        steps, _ = pad_packed_sequence(out, batch_first=True, total_length=total)
        last = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.bidirectional else h_n[-1]
        return steps, last

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Feature ``[B, hidden]``: the hidden state at each sequence's last valid step."""
        return self.forward_steps(x, lengths)[1]


class TransformerEncoder(nn.Module):
    """Linear embedding + learnable positions -> ``nn.TransformerEncoder`` -> masked mean pool.

    Post-norm encoder layers (``d_model = hidden``, ``nhead``, feed-forward ``4 * hidden``,
    ``batch_first``) with a key padding mask built from the lengths. Sequences longer than
    ``max_len`` keep their LAST ``max_len`` valid steps (the most recent observations, which
    matter most for ICU prediction); positions are re-indexed from 0 after truncation.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int = 256,
        layers: int = 2,
        nhead: int = 4,
        dropout: float = 0.3,
        max_len: int = 512,
    ) -> None:
        super().__init__()
        if hidden % nhead:
            raise ModelConfigError(f"transformer hidden ({hidden}) must be divisible by nhead")
        if max_len < 1 or layers < 1:
            raise ModelConfigError("transformer needs max_len >= 1 and ehr_layers >= 1")
        self.max_len = int(max_len)
        self.embed = nn.Linear(in_features, hidden)
        self.pos = nn.Parameter(torch.empty(1, self.max_len, hidden))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            hidden, nhead, dim_feedforward=4 * hidden, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out_dim = hidden

    def _last_window(
        self, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the last ``max_len`` valid steps of each sequence (left-aligned)."""
        if x.shape[1] <= self.max_len:
            return x, lengths
        start = (lengths - self.max_len).clamp(min=0)
        idx = start[:, None] + torch.arange(self.max_len, device=x.device)[None, :]
        x = x.gather(1, idx[..., None].expand(-1, -1, x.shape[2]))
        return x, lengths.clamp(max=self.max_len)

    def forward_steps(
        self, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step outputs ``[B, T', hidden]`` (T' = min(T, max_len)) and their lengths."""
        lengths = clamp_lengths(lengths, x.shape[1])
        x, lengths = self._last_window(x, lengths)
        h = self.embed(x) + self.pos[:, : x.shape[1]]
        pad = ~valid_step_mask(lengths, x.shape[1])
        return self.encoder(h, src_key_padding_mask=pad), lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Feature ``[B, hidden]``: mean of the outputs at valid steps."""
        steps, lengths = self.forward_steps(x, lengths)
        mask = valid_step_mask(lengths, steps.shape[1]).unsqueeze(-1).to(steps.dtype)
        return (steps * mask).sum(dim=1) / lengths[:, None].to(steps.dtype)


def build_ehr_encoder(kind: str, in_features: int, hp: dict[str, Any]) -> nn.Module:
    """Encoder ``kind`` ("lstm" | "transformer") configured from the flat hparams ``hp``."""
    if kind == "lstm":
        return LSTMEncoder(
            in_features,
            hidden=int(hp["hidden"]),
            layers=int(hp["ehr_layers"]),
            dropout=float(hp["dropout"]),
            bidirectional=bool(hp.get("bidirectional", False)),
        )
    if kind == "transformer":
        return TransformerEncoder(
            in_features,
            hidden=int(hp["hidden"]),
            layers=int(hp["ehr_layers"]),
            nhead=int(hp["nhead"]),
            dropout=float(hp["dropout"]),
            max_len=int(hp["max_len"]),
        )
    raise ModelConfigError(f"unknown ehr_encoder {kind!r}; valid: {', '.join(EHR_ENCODERS)}")
