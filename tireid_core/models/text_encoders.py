"""Text encoders with one calling convention: token ids and a mask in, per-token features out.

    encoder = create_text_encoder("bilstm", vocab_size=5000)        # SSAN
    encoder = create_text_encoder("bert")                           # NAFS and most later papers
    feats = encoder(ids, mask)                                      # B x L x encoder.out_dim

`ids` is a LongTensor B x L and `mask` a BoolTensor B x L with True on real tokens, right-padded as the tokenisers in
`tireid_core.data.tokenizers` produce. Outputs at padding positions are zero for the BiLSTM and the small transformer
(BERT returns whatever its last layer gives there; mask before pooling). Pooling (max, mean, [CLS], word attention)
belongs to the paper models, so every paper can pool its own way.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tireid_core.hub import hf_offline_help


def pool_tokens(feats: torch.Tensor, mask: torch.Tensor, how: str = "max") -> torch.Tensor:
    """Max or mean over the token axis (dim 1) of real tokens only; a row without tokens pools to zeros.

    `feats` is B×L×… (any trailing shape), `mask` B×L. Shared by every model that pools words.
    """
    m = mask.bool().reshape(*mask.shape, *([1] * (feats.dim() - 2)))
    if how == "max":
        pooled = feats.masked_fill(~m, float("-inf")).amax(1)
        return torch.where(m.any(1), pooled, torch.zeros_like(pooled))
    return (feats * m).sum(1) / m.sum(1).clamp(min=1)


class BiLSTMEncoder(nn.Module):
    """Embedding + dropout + one bidirectional LSTM layer over length-packed sequences (SSAN's text branch).

    merge="mean" averages the forward and backward outputs (SSAN: out_dim = hidden); "concat" stacks them
    (out_dim = 2 * hidden). Packing makes the backward direction start at each caption's last real word.

    Empty captions (all-pad rows, e.g. every word was out of vocabulary) are run as length 1 on the pad token, whose
    embedding is zero, and their outputs are set to zero, so a batch never crashes on them.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 512,
        hidden: int = 2048,
        dropout: float = 0.3,
        bias: bool = False,
        merge: str = "mean",
    ):
        super().__init__()
        if merge not in ("mean", "concat"):
            raise ValueError(f"merge must be 'mean' or 'concat', got {merge!r}")
        self.merge = merge
        self.out_dim = hidden if merge == "mean" else 2 * hidden
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=1, bias=bias, batch_first=True, bidirectional=True)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.forward_embeddings(self.dropout(self.embed(ids)), mask)

    def forward_embeddings(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run the LSTM on given embeddings (B x L x embed_dim).

        Separate from `forward` because SSAN runs one shared LSTM over two embedding tables (global and local).
        """
        mask = mask.bool()
        if self.lstm.bias:
            length = mask.shape[1]
            packed = pack_padded_sequence(
                embeddings, mask.sum(dim=1).clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
            )
            out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)  # B x L x 2*hidden
        else:
            # Without biases an LSTM fed zeros keeps a zero state (all gates 0.5, candidate 0), so the backward
            # direction passes the trailing padding unchanged: the same result as packing, and faster on the CPU
            # (the packed backward pass re-materialises the whole input at every time step).
            out, _ = self.lstm(embeddings * mask.unsqueeze(-1).to(embeddings.dtype))
        forward_out, backward_out = out.chunk(2, dim=-1)
        if self.merge == "mean":
            out = (forward_out + backward_out) / 2
        return out * mask.unsqueeze(-1).to(out.dtype)  # zero at padding and for empty captions


class TransformerTextEncoder(nn.Module):
    """A small pre-norm transformer trained from scratch: the CPU-demo stand-in for BERT.

    Learned positions, key-padding mask, final LayerNorm. All-pad rows let their first position attend to itself
    (otherwise the softmax has no valid key and returns NaN); their outputs are zeroed like all padding.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 128,
        layers: int = 2,
        heads: int = 4,
        max_len: int = 64,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.out_dim = dim
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # No nested-tensor fast path: it changes padding outputs between train and eval and warns with norm_first.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[0].zero_()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, attention: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """`attention` (optional, B × L × L bool): which keys each query may see, for block-structured attention
        (NAFS's single pass with sub-sentence [CLS] tokens); every row needs one True. `positions` (B × L) replaces
        0..L-1 as position ids."""
        mask = mask.bool()
        length = ids.shape[1]
        if positions is None:
            if length > self.max_len:
                raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}; tokenise with max_len <= {self.max_len}")
            positions = torch.arange(length, device=ids.device)
        elif int(positions.max()) >= self.max_len:
            raise ValueError(f"position id {int(positions.max())} exceeds max_len {self.max_len}")
        x = self.dropout(self.embed(ids) + self.pos(positions))
        if attention is not None:
            blocked = ~attention.bool().repeat_interleave(self.encoder.layers[0].self_attn.num_heads, dim=0)
            x = self.encoder(x, mask=blocked)
        else:
            attend = mask.clone()
            attend[:, 0] |= ~mask.any(dim=1)  # empty rows: one valid key so attention stays finite
            x = self.encoder(x, src_key_padding_mask=~attend)
        x = self.norm(x)
        return x * mask.unsqueeze(-1).to(x.dtype)


_BERT_BASE_UNCASED = ("bert-base-uncased", "google-bert/bert-base-uncased")


class BertTextEncoder(nn.Module):
    """A Hugging Face encoder (BERT family) returning its last hidden states.

    pretrained=False builds the architecture at random init from the config; for bert-base-uncased with nothing
    cached it uses `BertConfig()` (whose defaults are bert-base-uncased), so paper models can be built offline.
    config_overrides: config fields to change, e.g. {"hidden_dropout_prob": 0.0}.
    The pooler head is not built: no model here reads it, and DDP refuses parameters that never get a gradient.
    """

    def __init__(self, name_or_path: str = "bert-base-uncased", pretrained: bool = True, config_overrides=None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, BertConfig
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per model would flood notebook exports
        overrides = dict(config_overrides or {})
        if pretrained:
            try:
                self.model = AutoModel.from_pretrained(name_or_path, add_pooling_layer=False, **overrides)
            except OSError as err:
                raise RuntimeError(hf_offline_help(name_or_path, "pretrained model") + f"\n({err})") from err
        else:
            try:
                # bert-base-uncased: never wait on the network just for a config we know.
                local_only = name_or_path in _BERT_BASE_UNCASED
                config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_only)
            except OSError as err:
                if name_or_path not in _BERT_BASE_UNCASED:
                    raise RuntimeError(hf_offline_help(name_or_path, "model config") + f"\n({err})") from err
                config = BertConfig()
            for key, value in overrides.items():
                setattr(config, key, value)
            self.model = AutoModel.from_config(config, add_pooling_layer=False)
        self.config = self.model.config
        self.out_dim = self.config.hidden_size

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, attention: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """`attention` (B × L × L, optional) is passed to BERT as a per-query attention mask; `positions` as
        position ids (see TransformerTextEncoder)."""
        if attention is None:
            attention_mask = mask.long()
        else:  # a prepared 4-D additive mask (B × 1 × L × L) is used as is by every attention implementation
            dtype = next(self.model.parameters()).dtype
            blocked = torch.zeros(attention.shape, dtype=dtype, device=ids.device)
            attention_mask = blocked.masked_fill(~attention.bool(), torch.finfo(dtype).min)[:, None]
        return self.model(input_ids=ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state


def create_bert(model_params) -> BertTextEncoder:
    """The `text_encoder: bert` of a run's model parameters (folder or hub name, pretrained or not, dropout)."""
    m = model_params
    overrides = None
    if m.bert_dropout is not None:
        overrides = {"hidden_dropout_prob": m.bert_dropout, "attention_probs_dropout_prob": m.bert_dropout}
    return BertTextEncoder(m.text_model, pretrained=m.text_pretrained, config_overrides=overrides)


_TEXT_ENCODERS = {"bilstm": BiLSTMEncoder, "transformer": TransformerTextEncoder, "bert": BertTextEncoder}


def create_text_encoder(name: str, **kwargs) -> nn.Module:
    """Build a text encoder by name ("bilstm", "transformer", "bert"); kwargs go to its constructor."""
    if name not in _TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; available: {sorted(_TEXT_ENCODERS)}")
    return _TEXT_ENCODERS[name](**kwargs)
