"""A radial_jax Radial Network in PyTorch, for Hugging Face transformers (`trust_remote_code=True`).

Written by `radial export --format hf`. It computes what radial_jax computes at inference (its
`RadialLM(inference=True)` and its KV-cache decoding): no capacity limit, so no token is dropped;
with `routing_skip=learned` the router's P(skip) decides skips.

The model: token embedding; `prefix_layers` dense blocks that every token runs; then T routing
steps over a pool of P blocks. At step t a router scores, for every token, the P pool layers and
"skip"; the token runs its chosen layer (or top-k layers) or skips, under the routing constraints
(reuse, order), and the block's residual update `block(x) - x` is scaled by the router's gate.
A pool layer may serve a token at several steps, so depth and parameter count are decoupled.

Attention at routing step t reads step t's KV slot: for every position, the keys and values made
by the pool layer that processed it at step t (their average with top-k > 1). Positions not
processed at step t are masked (`kv_skip=mask`) or show their most recent keys/values from an
earlier step (`kv_skip=carry`). The KV cache (`RadialCache`) keeps one such slot per prefix layer
and per routing step, each with a `present` flag per position.

Shape letters: B batch, S new positions, M all positions (cached and new), N rows (tokens of any
positions gathered into one list), D model width, H query heads, G key/value heads, K head width,
V vocabulary, P pool layers, R = P + 1 router choices (skip is index P), J choices per token and
routing step (top-k).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_radial import RadialConfig

NEG = -1e9  # the router logit of a forbidden choice
# Where model outputs carry the cache: `cache` in transformers >= 5, `past_key_values` before.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


# ------------------------------------------------------------------------------------ KV cache


class RadialSlotLayer(DynamicLayer):
    """One KV slot (a prefix layer's, or a routing step's): keys and values [B, G, M, K] of every
    position so far, and `present` [B, M]: whether the position has keys/values in this slot.
    Padding never does; at a routing step, only the positions processed at that step do (with
    kv_skip=carry: processed at that step or an earlier one)."""

    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        self.present = torch.zeros(key_states.shape[0], 0, dtype=torch.bool, device=key_states.device)

    def update(self, key_states, value_states, *args, present=None, **kwargs):
        """Append S positions: keys/values [B, G, S, K], present [B, S] (default: all present)."""
        keys, values = super().update(key_states, value_states)
        if present is None:
            present = torch.ones(key_states.shape[0], key_states.shape[2], dtype=torch.bool,
                                 device=key_states.device)
        self.present = torch.cat([self.present, present.to(self.present.device)], dim=-1)
        return keys, values

    def reset(self) -> None:
        super().reset()
        self.present = None

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if self.is_initialized and tokens_to_remove < 0:
            self.present = self.present[:, :tokens_to_remove]

    def reorder_cache(self, beam_idx) -> None:
        if self.get_seq_length() > 0:
            self.present = self.present.index_select(0, beam_idx.to(self.present.device))
        super().reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self.present = self.present.repeat_interleave(repeats, dim=0)
        super().batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices) -> None:
        if self.get_seq_length() > 0:
            self.present = self.present[indices, ...]
        super().batch_select_indices(indices)


class RadialCache(Cache):
    """The shared KV cache of a radial model: slot i < prefix_layers for prefix block i, then slot
    prefix_layers + t for routing step t (whichever pool layer processed each position there)."""

    def __init__(self, config: RadialConfig):
        slots = config.prefix_layers + config.routing_steps
        super().__init__(layers=[RadialSlotLayer() for _ in range(slots)])

    def append(self, slot: int, k_BxSxGxK, v_BxSxGxK, present_BxS):
        """Store new positions' keys/values in a slot; returns all its keys and values [B, G, M, K]
        and present flags [B, M]."""
        layer = self.layers[slot]
        keys, values = layer.update(k_BxSxGxK.transpose(1, 2), v_BxSxGxK.transpose(1, 2), present=present_BxS)
        return keys, values, layer.present


# ------------------------------------------------------------------------------------ layers


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


def apply_rope(x_NxHxK, pos_N, theta: float):
    """Rotary embedding, rotate-half layout (as Llama), at each row's position."""
    k = x_NxHxK.shape[-1]
    freq = 1.0 / theta ** (torch.arange(0, k, 2, dtype=torch.float32, device=x_NxHxK.device) / k)
    angle_Nx1xK2 = (pos_N.float()[:, None] * freq)[:, None, :]
    cos, sin = angle_Nx1xK2.cos(), angle_Nx1xK2.sin()
    x1, x2 = x_NxHxK.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x_NxHxK.dtype)


def attend(q_BxSxHxK, k_BxGxMxK, v_BxGxMxK, mask_BxSxM):
    """Softmax attention of the new positions over a KV slot; query head h reads key/value head
    h // (H / G). Masked keys get the float minimum, so a fully masked row stays finite."""
    b, s, h, k = q_BxSxHxK.shape
    g = k_BxGxMxK.shape[1]
    q_BxGxRxSxK = q_BxSxHxK.reshape(b, s, g, h // g, k).permute(0, 2, 3, 1, 4)
    scores = torch.einsum("bgrsk,bgmk->bgrsm", q_BxGxRxSxK.float(), k_BxGxMxK.float()) * k ** -0.5
    scores = scores.masked_fill(~mask_BxSxM[:, None, None], torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1).to(v_BxGxMxK.dtype)
    o_BxGxRxSxK = torch.einsum("bgrsm,bgmk->bgrsk", probs, v_BxGxMxK)
    return o_BxGxRxSxK.permute(0, 3, 1, 2, 4).reshape(b, s, h, k)


def slot_mask(present_BxM, past: int, s: int):
    """[B, S, M] keys a new position's query sees: present and not after it, and always its own
    key (so no row is empty: a real token is present at its own position wherever it runs)."""
    m = present_BxM.shape[1]
    key_M = torch.arange(m, device=present_BxM.device)
    query_S = past + torch.arange(s, device=present_BxM.device)
    before_SxM = key_M[None, :] <= query_S[:, None]
    own_SxM = key_M[None, :] == query_S[:, None]
    return (present_BxM[:, None, :] & before_SxM[None]) | own_SxM[None]


def carry_forward(new, old):
    """`kv_skip: carry`: positions this step did not process keep the last keys/values that did.

    `new` and `old` are (k_BxSxGxK, v_BxSxGxK, present_BxS); returns the merged triple.
    """
    (k, v, present), (old_k, old_v, had) = new, old
    keep = present[..., None, None]
    return torch.where(keep, k, old_k), torch.where(keep, v, old_v), present | had


class Block(nn.Module):
    """Pre-norm transformer block (Llama style): x + attn(norm(x)), then + mlp(norm(.)).

    Split in two halves, `qkv` then `finish`, so that a routing step can build its KV slot from
    tokens that different pool layers processed before any of them attends. Both work on rows
    [N, D] (tokens of any positions), so a pool layer runs on the tokens routed to it only."""

    def __init__(self, config: RadialConfig):
        super().__init__()
        d, h, g, k = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                      config.head_dim)
        self.heads, self.kv_heads, self.head_dim, self.theta = h, g, k, config.rope_theta
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, h * k, bias=False)
        self.k_proj = nn.Linear(d, g * k, bias=False)
        self.v_proj = nn.Linear(d, g * k, bias=False)
        self.o_proj = nn.Linear(h * k, d, bias=False)
        self.mlp_norm = RMSNorm(d, config.rms_norm_eps)
        self.gate_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, d, bias=False)

    def qkv(self, x_NxD, pos_N):
        """Queries [N, H, K], keys and values [N, G, K] of rows x at positions pos (RoPE applied)."""
        n = x_NxD.shape[0]
        x = self.attn_norm(x_NxD)
        q = apply_rope(self.q_proj(x).view(n, self.heads, self.head_dim), pos_N, self.theta)
        k = apply_rope(self.k_proj(x).view(n, self.kv_heads, self.head_dim), pos_N, self.theta)
        return q, k, self.v_proj(x).view(n, self.kv_heads, self.head_dim)

    def finish(self, x_NxD, attn_NxHxK):
        """The block's output for rows x, given their attention outputs (before o_proj)."""
        h = x_NxD + self.o_proj(attn_NxHxK.reshape(x_NxD.shape[0], -1))
        m = self.mlp_norm(h)
        return h + self.down_proj(F.silu(self.gate_proj(m)) * self.up_proj(m))


class Router(nn.Module):
    """Float32 logits [B, S, R] for routing step t: RMSNorm, then a tanh-GELU MLP whose weights are
    the step's own (`router_per_step`) or shared, with a learned step embedding added to its
    hidden layer. `select_bias` [T, P] shifts which layer wins (load balancing), never the gates."""

    def __init__(self, config: RadialConfig):
        super().__init__()
        d, n, t, p = config.hidden_size, config.router_hidden, config.routing_steps, config.pool_size
        self.per_step = config.router_per_step
        self.norm = RMSNorm(d, config.rms_norm_eps)
        if self.per_step:
            self.w_in = nn.Parameter(torch.zeros(t, d, n))
            self.w_out = nn.Parameter(torch.zeros(t, n, p + 1))
        else:
            self.w_in = nn.Parameter(torch.zeros(d, n))
            self.step_embed = nn.Parameter(torch.zeros(t, n))
            self.w_out = nn.Parameter(torch.zeros(n, p + 1))
        self.b_in = nn.Parameter(torch.zeros(t, n))
        self.b_out = nn.Parameter(torch.zeros(t, p + 1))
        self.register_buffer("select_bias", torch.zeros(t, p))

    def forward(self, h_BxSxD, t: int):
        if self.per_step:
            w_in, b_in, w_out = self.w_in[t], self.b_in[t], self.w_out[t]
        else:
            w_in, b_in, w_out = self.w_in, self.b_in[t] + self.step_embed[t], self.w_out
        x = self.norm(h_BxSxD.float())
        a = F.gelu(x @ w_in.float() + b_in.float(), approximate="tanh")
        return a @ w_out.float() + self.b_out[t].float()


# ------------------------------------------------------------------------------------ routing


@dataclass
class History:
    """What each token has done at earlier routing steps (the constraints' memory)."""
    used_BxSxP: torch.Tensor  # bool: the token ran this pool layer
    last_BxS: torch.Tensor    # long: the highest pool layer it ran, -1 if none

    def update(self, choice_BxSxJ, pool_size: int) -> History:
        kept_BxSxJ = choice_BxSxJ < pool_size
        hit_BxSxP = F.one_hot(choice_BxSxJ, pool_size + 1)[..., :pool_size].bool().any(dim=2)
        ran_BxS = torch.where(kept_BxSxJ, choice_BxSxJ, -1).max(dim=-1).values
        return History(self.used_BxSxP | hit_BxSxP, torch.maximum(self.last_BxS, ran_BxS))


def allowed_layers(hist: History, reuse: str, order: str):
    """[B, S, P] bool: the pool layers a token may choose now."""
    p = hist.used_BxSxP.shape[-1]
    ok = torch.ones_like(hist.used_BxSxP)
    if reuse == "forbid":
        ok = ok & ~hist.used_BxSxP
    if order == "monotonic":
        layer_P = torch.arange(p, device=ok.device)
        last = hist.last_BxS[..., None]
        ok = ok & ((layer_P > last) if reuse == "forbid" else (layer_P >= last))
    return ok


def constrain(logits_BxSxR, allowed_BxSxP, valid_BxS, skip: str):
    """Forbidden choices get logit NEG; padding may only skip; with skip `forbid` a real token
    skips only when its constraints leave it no layer."""
    layer_ok = allowed_BxSxP & valid_BxS[..., None]
    skip_ok = torch.ones_like(valid_BxS) if skip == "allow" else ~layer_ok.any(dim=-1)
    ok_BxSxR = torch.cat([layer_ok, skip_ok[..., None]], dim=-1)
    return torch.where(ok_BxSxR, logits_BxSxR, torch.full_like(logits_BxSxR, NEG))


def route(config: RadialConfig, logits_BxSxR, t: int, hist: History, valid_BxS, select_bias_P):
    """(choices [B, S, J] in [0, P], P = skip; gates [B, S, J], 0 where skipped) of routing step t.

    token_choice: a token skips when P(skip) > 1/2 (with skip `learned`: P(skip) with skip allowed,
    while layers are chosen as if skip were forbidden); otherwise it takes its top-k layers by
    logit + select_bias (ties to the lower layer), each gated by its router probability.
    fixed: step t runs layer t mod P for every real token, gate 1."""
    p = config.pool_size
    if config.routing_policy == "fixed":
        choice_BxSx1 = torch.where(valid_BxS, t % p, p)[..., None]
        return choice_BxSx1, (choice_BxSx1 < p).float()
    allowed = allowed_layers(hist, config.routing_reuse, config.routing_order) & valid_BxS[..., None]
    skip = config.routing_skip
    masked_BxSxR = constrain(logits_BxSxR, allowed, valid_BxS, "forbid" if skip == "learned" else skip)
    probs_BxSxR = masked_BxSxR.softmax(dim=-1)
    if skip == "learned":
        p_skip_BxS = constrain(logits_BxSxR, allowed, valid_BxS, "allow").softmax(dim=-1)[..., p]
    else:
        p_skip_BxS = probs_BxSxR[..., p]
    score_BxSxP = masked_BxSxR[..., :p] + select_bias_P.float()
    choice_BxSxJ = score_BxSxP.sort(dim=-1, descending=True, stable=True).indices[..., :config.routing_top_k]
    prob_BxSxJ = probs_BxSxR[..., :p].gather(-1, choice_BxSxJ)
    skipped_BxSxJ = (p_skip_BxS[..., None] > 0.5) | (prob_BxSxJ <= 0.0)  # or a forbidden layer
    choice_BxSxJ = torch.where(skipped_BxSxJ, p, choice_BxSxJ)
    if config.routing_gate == "straight_through":  # 1, with the probability's gradient
        gate_BxSxJ = 1.0 + prob_BxSxJ - prob_BxSxJ.detach()
    else:
        gate_BxSxJ = prob_BxSxJ
    return choice_BxSxJ, gate_BxSxJ * (choice_BxSxJ < p)


# ------------------------------------------------------------------------------------ model


class RadialPreTrainedModel(PreTrainedModel):
    config_class = RadialConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """generate() must not make a DynamicCache: the forward pass makes its RadialCache."""
        return False

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, Router):
            for name, w in module.named_parameters(recurse=False):
                if name.startswith("w_"):
                    nn.init.normal_(w, std=std)
                else:
                    nn.init.zeros_(w)
            module.select_bias.zero_()


class RadialModel(RadialPreTrainedModel):
    """Embedding, prefix blocks, routing steps over the pool and the final norm: hidden states."""

    def __init__(self, config: RadialConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.prefix = nn.ModuleList([Block(config) for _ in range(config.prefix_layers)])
        self.pool = nn.ModuleList([Block(config) for _ in range(config.pool_size)])
        self.router = Router(config)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, use_cache=None, past_key_values=None, **kwargs):
        """attention_mask [B, M] (1 = real token; left padding), for cached and new positions;
        position_ids [B, S] (default: counted from the mask). Returns the final-norm hidden states
        [B, S, D] and, with use_cache, the RadialCache to pass back for the next tokens."""
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is not None and not isinstance(cache, RadialCache):
            raise ValueError(f"a radial model keeps its keys/values in a RadialCache (one slot per prefix "
                             f"layer and routing step), not a {type(cache).__name__}; pass cache=None")
        if cache is None:  # without use_cache, a cache that lives for this call only
            cache = RadialCache(self.config)
        h_BxSxD = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, s = h_BxSxD.shape[:2]
        past = cache.get_seq_length()
        if attention_mask is None:
            attention_mask = torch.ones(b, past + s, dtype=torch.long, device=h_BxSxD.device)
        valid_BxS = attention_mask[:, -s:].bool()
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -s:]
        pos_BxS = position_ids.to(h_BxSxD.device)

        for i, block in enumerate(self.prefix):  # every token, slot i
            x_NxD = h_BxSxD.reshape(b * s, -1)
            q, k, v = block.qkv(x_NxD, pos_BxS.reshape(-1))
            o_BxSxHxK = self._attend_slot(cache, i, q, k, v, valid_BxS, past)
            h_BxSxD = block.finish(x_NxD, o_BxSxHxK.flatten(0, 1)).view(b, s, -1)

        p = self.config.pool_size
        hist = History(torch.zeros(b, s, p, dtype=torch.bool, device=h_BxSxD.device),
                       torch.full((b, s), -1, dtype=torch.long, device=h_BxSxD.device))
        carry = None
        for t in range(self.config.routing_steps):
            choice_BxSxJ, gate_BxSxJ = route(self.config, self.router(h_BxSxD, t), t, hist, valid_BxS,
                                             self.router.select_bias[t])
            h_BxSxD, carry = self._routed_step(cache, t, h_BxSxD, pos_BxS, valid_BxS, past,
                                               choice_BxSxJ, gate_BxSxJ, carry)
            hist = hist.update(choice_BxSxJ, p)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(h_BxSxD),
                                       **{CACHE_FIELD: cache if use_cache else None})

    def _attend_slot(self, cache: RadialCache, slot: int, q_NxHxK, k_NxGxK, v_NxGxK, present_BxS, past):
        """Append new positions' keys/values to a slot, then attend: outputs [B, S, H, K]."""
        b, s = present_BxS.shape
        keys, values, present_BxM = cache.append(slot, k_NxGxK.view(b, s, *k_NxGxK.shape[1:]),
                                                 v_NxGxK.view(b, s, *v_NxGxK.shape[1:]), present_BxS)
        return attend(q_NxHxK.view(b, s, *q_NxHxK.shape[1:]), keys, values, slot_mask(present_BxM, past, s))

    def _routed_step(self, cache, t, h_BxSxD, pos_BxS, valid_BxS, past, choice_BxSxJ, gate_BxSxJ, carry):
        """One routing step: each pool layer runs on the tokens routed to it; returns h and the
        (keys, values, present) carried to the next step (kv_skip=carry)."""
        b, s, _ = h_BxSxD.shape
        cfg, p = self.config, self.config.pool_size
        g, k, nh = cfg.num_key_value_heads, cfg.head_dim, cfg.num_attention_heads
        zeros = dict(dtype=h_BxSxD.dtype, device=h_BxSxD.device)
        q_JxBxSxHxK = torch.zeros(choice_BxSxJ.shape[-1], b, s, nh, k, **zeros)
        k_sum_BxSxGxK, v_sum_BxSxGxK = torch.zeros(b, s, g, k, **zeros), torch.zeros(b, s, g, k, **zeros)
        # 1. Every chosen layer makes its tokens' queries, keys and values.
        for j in range(choice_BxSxJ.shape[-1]):
            for layer in range(p):
                sel_BxS = choice_BxSxJ[..., j] == layer
                if sel_BxS.any():
                    q, k_, v = self.pool[layer].qkv(h_BxSxD[sel_BxS], pos_BxS[sel_BxS])
                    q_JxBxSxHxK[j][sel_BxS] = q
                    k_sum_BxSxGxK[sel_BxS] += k_
                    v_sum_BxSxGxK[sel_BxS] += v
        # 2. The step's KV slot for the new positions: the average over the layers that ran each.
        n_BxS = (choice_BxSxJ < p).sum(-1)
        scale = (1.0 / n_BxS.clamp(min=1)).to(h_BxSxD.dtype)[..., None, None]
        k_BxSxGxK, v_BxSxGxK, present_BxS = k_sum_BxSxGxK * scale, v_sum_BxSxGxK * scale, n_BxS > 0
        if cfg.kv_skip == "carry":
            if carry is not None:
                k_BxSxGxK, v_BxSxGxK, present_BxS = carry_forward(
                    (k_BxSxGxK, v_BxSxGxK, present_BxS), carry)
            carry = (k_BxSxGxK, v_BxSxGxK, present_BxS)
        keys, values, present_BxM = cache.append(cfg.prefix_layers + t, k_BxSxGxK, v_BxSxGxK,
                                                 present_BxS & valid_BxS)
        mask_BxSxM = slot_mask(present_BxM, past, s)
        # 3. Every chosen layer attends for its tokens (queries of the j-th choices are attended as
        #    one batch) and finishes; the updates are gated and summed.
        delta_BxSxD = torch.zeros_like(h_BxSxD)
        for j in range(choice_BxSxJ.shape[-1]):
            o_BxSxHxK = attend(q_JxBxSxHxK[j], keys, values, mask_BxSxM)
            for layer in range(p):
                sel_BxS = choice_BxSxJ[..., j] == layer
                if sel_BxS.any():
                    x_NxD = h_BxSxD[sel_BxS]
                    y_NxD = self.pool[layer].finish(x_NxD, o_BxSxHxK[sel_BxS])
                    gate_Nx1 = gate_BxSxJ[..., j][sel_BxS][:, None].to(x_NxD.dtype)
                    delta_BxSxD[sel_BxS] += (y_NxD - x_NxD) * gate_Nx1
        return h_BxSxD + delta_BxSxD, carry


class RadialForCausalLM(RadialPreTrainedModel, GenerationMixin):
    """The radial model with its vocabulary head (tied to the embedding unless the model has its own)."""

    def __init__(self, config: RadialConfig):
        super().__init__(config)
        self.model = RadialModel(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(
            config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0,
                past_key_values=None, **kwargs):
        """Float32-or-model-dtype logits [B, S, V]; with labels [B, S] also the next-token
        cross-entropy (labels -100 ignored), labels shifted inside as in transformers' causal LMs."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         past_key_values=past_key_values)
        h_BxSxD = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h_BxSxD = h_BxSxD[:, -logits_to_keep:]
        head = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits_BxSxV = h_BxSxD @ head.T.to(h_BxSxD.dtype)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits_BxSxV[:, :-1].reshape(-1, logits_BxSxV.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1).to(logits_BxSxV.device), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits_BxSxV,
                                      **{CACHE_FIELD: getattr(out, CACHE_FIELD)})
