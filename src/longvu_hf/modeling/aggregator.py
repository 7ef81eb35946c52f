"""The Spatial Vision Aggregator (SVA) of Cambrian, as LongVU uses it (docs/reference.md §2.3).

Per frame, each encoder's 24x24 feature map is projected to the SVA width, cut into `query_grid x query_grid`
windows, and a learned query per window attends (3 layers) to that window's tokens of both encoders, conditioned on the
frame's global context (the mean of its projected SigLIP tokens).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_longvu import LongVUConfig


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention; `(batch, heads, len, dim)` in, `(batch, len, heads, dim)` out like the other backends."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class LongVUEncoderProjection(nn.Module):
    """Linear -> GELU -> Linear -> LayerNorm from one encoder's width to the SVA width (`mm_projector_aux_i`)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_features, out_features)
        self.layer_norm = nn.LayerNorm(out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.linear_2(self.act(self.linear_1(features))))


class LongVUAggregatorMLP(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear_1 = nn.Linear(hidden_size, hidden_size, bias=False)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(hidden_states)))


class LongVUMultiKVCrossAttention(nn.Module):
    """One query per window attends to the window's tokens of every encoder (keys/values concatenated)."""

    def __init__(self, config: LongVUConfig, num_encoders: int = 2):
        super().__init__()
        self.config = config
        hidden = config.aggregator_hidden_size
        self.num_heads = config.aggregator_num_heads
        self.head_dim = hidden // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_norm = nn.LayerNorm(hidden)
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(num_encoders)])
        self.k_projs = nn.ModuleList([nn.Linear(hidden, hidden, bias=False) for _ in range(num_encoders)])
        self.v_norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(num_encoders)])
        self.v_projs = nn.ModuleList([nn.Linear(hidden, hidden, bias=False) for _ in range(num_encoders)])
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(
        self, queries: torch.Tensor, encoder_windows: list[torch.Tensor], attention_mask: torch.Tensor | None, **kwargs
    ) -> torch.Tensor:
        batch, q_len, _ = queries.shape
        keys = torch.cat([proj(norm(w)) for w, norm, proj in zip(encoder_windows, self.k_norms, self.k_projs)], dim=1)
        values = torch.cat([proj(norm(w)) for w, norm, proj in zip(encoder_windows, self.v_norms, self.v_projs)], dim=1)
        query_states = self.q_proj(self.q_norm(queries)).view(batch, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        key_states = keys.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value_states = values.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, _ = attention_interface(
            self, query_states, key_states, value_states, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs
        )
        return self.o_proj(attn_output.reshape(batch, q_len, -1))


class LongVUAggregatorLayer(GradientCheckpointingLayer):
    """One SVA layer (`VisionCrossAttentionLayer` in the reference).

    Every tensor that can carry gradients (`queries`, `context`, and each encoder's windows) is a positional argument:
    under gradient checkpointing only positional tensors are the checkpoint's inputs. With `use_reentrant=True` (the
    default of PEFT's `prepare_model_for_kbit_training`), a tensor hidden in a list or a keyword argument is neither
    detached for the recompute nor given a gradient at the boundary; the recompute's backward would instead run
    straight into the graph outside the layer (the encoder projections, shared by all layers) and free it, so the next
    layer's backward fails with "Trying to backward through the graph a second time". The mask needs no gradient and
    is a keyword argument.
    """

    def __init__(self, config: LongVUConfig, num_encoders: int = 2):
        super().__init__()
        hidden = config.aggregator_hidden_size
        self.proj_context = nn.Linear(hidden, hidden, bias=False)
        self.proj_in = nn.Linear(2 * hidden, hidden, bias=False)
        self.proj_out = LongVUAggregatorMLP(hidden)
        self.norm = nn.LayerNorm(hidden)
        self.cross_attn = LongVUMultiKVCrossAttention(config, num_encoders)
        window = config.encoder_grid_size // config.query_grid_size
        # Learned window position embeddings exist only when a window has more than one token (144-query video
        # checkpoints); image checkpoints (576 queries, 1x1 windows) have none.
        self.pos_embeds = nn.ParameterList(
            [nn.Parameter(torch.randn(window * window, hidden)) for _ in range(num_encoders)] if window > 1 else []
        )

    def forward(
        self,
        queries: torch.Tensor,
        context: torch.Tensor,
        *encoder_windows: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """
        Args:
            queries: `(frames * num_queries, 1, width)`, one query per window.
            context: `(frames * num_queries, 1, width)`, the frame's global context for each query.
            encoder_windows: one `(frames * num_queries, window**2, width)` tensor per encoder (SigLIP, DINOv2).
            attention_mask: additive `(frames * num_queries, 1, 1, num_encoders * window**2)` key mask.
        """
        residual = queries
        hidden = self.proj_in(torch.cat([queries, self.proj_context(context)], dim=-1))
        if len(self.pos_embeds):
            encoder_windows = [w + pos.to(w.dtype) for w, pos in zip(encoder_windows, self.pos_embeds)]
        hidden = hidden + self.cross_attn(hidden, encoder_windows, attention_mask, **kwargs)
        hidden = self.proj_out(self.norm(hidden))
        return hidden + residual


def to_windows(grid_features: torch.Tensor, query_grid: int) -> torch.Tensor:
    """`(frames, side*side, dim)` -> `(frames * query_grid**2, window**2, dim)`, windows row-major, tokens (dy, dx)."""
    frames, tokens, dim = grid_features.shape
    side = int(round(tokens**0.5))
    window = side // query_grid
    grid = grid_features.view(frames, query_grid, window, query_grid, window, dim)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(frames * query_grid * query_grid, window * window, dim)


def window_key_mask(content_mask: torch.Tensor, query_grid: int) -> torch.Tensor:
    """`(side, side)` content mask -> `(query_grid**2, window**2)`; fully masked windows attend everywhere instead."""
    side = content_mask.shape[0]
    window = side // query_grid
    mask = content_mask.view(query_grid, window, query_grid, window).permute(0, 2, 1, 3).reshape(query_grid**2, -1)
    mask = mask.clone()
    mask[mask.sum(-1) == 0] = True
    return mask


class LongVUVisionAggregator(nn.Module):
    """Spatial Vision Aggregator: two encoders' `(frames, 576, d_i)` features -> `(frames, num_queries, width)`."""

    def __init__(self, config: LongVUConfig):
        super().__init__()
        self.config = config
        hidden = config.aggregator_hidden_size
        encoder_widths = [config.vision_config.hidden_size, config.dino_config.hidden_size]
        self.encoder_projections = nn.ModuleList([LongVUEncoderProjection(d, hidden) for d in encoder_widths])
        self.query = nn.Parameter(torch.zeros(1, hidden))
        self.layers = nn.ModuleList(
            [LongVUAggregatorLayer(config, len(encoder_widths)) for _ in range(config.aggregator_num_layers)]
        )

    def forward(self, encoder_features: list[torch.Tensor], key_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            encoder_features: `[siglip (frames, 576, d0), dino (frames, 576, d1)]`.
            key_mask: `(query_grid**2, 2 * window**2)` bool, True = attend (the same for every frame of a video).
        """
        query_grid = self.config.query_grid_size
        num_queries = query_grid * query_grid
        dtype = self.query.dtype
        projected = [proj(f.to(dtype)) for proj, f in zip(self.encoder_projections, encoder_features)]
        frames = projected[0].shape[0]
        # Global context: the mean of all projected SigLIP tokens, padding included (as the reference).
        context = projected[0].mean(1).repeat_interleave(num_queries, dim=0).unsqueeze(1)
        windows = [to_windows(p, query_grid) for p in projected]
        queries = self.query.view(1, 1, -1).expand(frames * num_queries, 1, -1)
        additive_mask = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device)
        additive_mask = additive_mask.masked_fill(~key_mask, torch.finfo(dtype).min)
        additive_mask = additive_mask.repeat(frames, 1).view(frames * num_queries, 1, 1, -1)
        for layer in self.layers:
            queries = layer(queries, context, *windows, attention_mask=additive_mask)
        return queries.view(frames, num_queries, -1)
