"""The engine's own forward for the Llama family (llama, mistral, qwen2): transformers' math in fewer ops.

On the small models the engine runs, and on a GPU at small batch, a decode forward is bound by how many
ops it launches, not by their arithmetic: transformers' Llama layer runs ~80 of them (eight for each
RMSNorm, fourteen for the rotary embedding of q and k, three projections where one would do). This
forward runs the same modules' weights with:
  - q, k and v as one matmul, and gate and up as one (the weights are concatenated once; the original
    modules' parameters become views of the fused ones, so no memory is added and transformers' own
    forward still works on the same model);
  - RMSNorm as one `rms_norm` op;
  - the rotary embedding of q and k together in three ops: rotate_half(x) * sin equals
    roll(x, d/2) * [-sin_1, sin_2], so the sign is folded into sin once per forward;
  - the paged attention reference called directly on the packed [tokens, heads, head_dim] layout, with no
    transposes in and out, and no causal mask built (the attention plan carries the ragged masking);
  - logits only for the rows that need them.
`FusedForward.supports(model)` says when it applies; the model runner falls back to transformers' forward
(through the registered attention function) for anything else. tests/test_fused_forward.py holds the
two paths to the same logits, and the greedy and sampled engine tests run on this one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adaspec.engine.attention import ForwardContext, attend_paged

FUSED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class FusedForward:
    def __init__(self, model: torch.nn.Module):
        assert self.supports(model), f"no fused forward for {type(model).__name__}"
        self.model = model
        config = model.config
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.layers = [_FusedLayer(layer) for layer in model.model.layers]
        first = model.model.layers[0].self_attn
        self.head_dim, self.scaling = first.head_dim, first.scaling
        sign = torch.ones(self.head_dim, dtype=model.dtype, device=model.device)  # [head_dim]
        sign[: self.head_dim // 2] = -1.0
        self.sin_sign = sign

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        config = model.config
        return (config.model_type in FUSED_MODEL_TYPES and config.hidden_act == "silu"
                and not getattr(config, "mlp_bias", False))

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, logit_index: torch.Tensor,
                 ctx: ForwardContext) -> torch.Tensor:
        """input_ids, positions: [num_tokens]; logit_index: [num_logits] rows wanted. Returns [num_logits, vocab]."""
        return self.model.lm_head(self.hidden_states(input_ids, positions, logit_index, ctx))

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor, logit_index: torch.Tensor,
                      ctx: ForwardContext) -> torch.Tensor:
        """The final-norm hidden states of the rows wanted: [num_logits, hidden] (the output layer's input)."""
        body = self.model.model
        hidden = body.embed_tokens(input_ids)  # [num_tokens, hidden]
        cos, sin = body.rotary_emb(hidden, positions[None])  # [1, num_tokens, head_dim] each
        cos, sin = cos[0, :, None, :], (sin[0] * self.sin_sign)[:, None, :]  # [num_tokens, 1, head_dim]
        for layer_idx, layer in enumerate(self.layers):
            hidden = self._layer(layer_idx, layer, hidden, cos, sin, ctx)
        hidden = hidden.index_select(0, logit_index)  # [num_logits, hidden]
        return F.rms_norm(hidden, hidden.shape[-1:], body.norm.weight, body.norm.variance_epsilon)

    def _layer(self, layer_idx: int, layer: _FusedLayer, hidden: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        num_tokens, heads, kv_heads, head_dim = hidden.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        x = F.rms_norm(hidden, hidden.shape[-1:], layer.input_norm.weight, layer.input_norm.variance_epsilon)
        qkv = F.linear(x, layer.qkv_weight, layer.qkv_bias).view(num_tokens, heads + 2 * kv_heads, head_dim)
        qk = qkv[:, : heads + kv_heads]  # [num_tokens, heads + kv_heads, head_dim]
        qk = torch.addcmul(qk * cos, qk.roll(head_dim // 2, dims=-1), sin)
        query, key, value = qk[:, :heads], qk[:, heads:], qkv[:, heads + kv_heads :]
        out = attend_paged(ctx, layer_idx, query, key, value, self.scaling)  # [num_tokens, heads, head_dim]
        hidden = hidden + layer.o_proj(out.reshape(num_tokens, heads * head_dim))
        x = F.rms_norm(hidden, hidden.shape[-1:], layer.post_norm.weight, layer.post_norm.variance_epsilon)
        gate, up = F.linear(x, layer.gate_up_weight).chunk(2, dim=-1)
        return hidden + layer.down_proj(F.silu(gate) * up)


class _FusedLayer:
    """One decoder layer's modules, with q/k/v and gate/up weights concatenated."""

    def __init__(self, layer: torch.nn.Module):
        attn, mlp = layer.self_attn, layer.mlp
        self.input_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.o_proj, self.down_proj = attn.o_proj, mlp.down_proj
        self.qkv_weight = _concatenate([attn.q_proj, attn.k_proj, attn.v_proj], "weight")
        self.qkv_bias = _concatenate([attn.q_proj, attn.k_proj, attn.v_proj], "bias")
        self.gate_up_weight = _concatenate([mlp.gate_proj, mlp.up_proj], "weight")


@torch.no_grad()
def _concatenate(linears: list[torch.nn.Linear], name: str) -> torch.Tensor | None:
    """One tensor holding every module's `name` parameter along dim 0; each module's parameter becomes a view of
    its rows, so the fused copy costs no memory and both forwards read the same weights."""
    parts = [getattr(linear, name) for linear in linears]
    if all(part is None for part in parts):
        return None
    assert all(part is not None for part in parts), f"some projections have a {name} and some do not"
    fused = torch.cat([part.detach() for part in parts])
    start = 0
    for linear, part in zip(linears, parts):
        setattr(linear, name, torch.nn.Parameter(fused[start : start + part.shape[0]], requires_grad=False))
        start += part.shape[0]
    return fused
