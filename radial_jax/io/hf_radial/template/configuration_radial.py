"""Configuration of a radial_jax Radial Network ported to PyTorch (see modeling_radial.py).

Written by `radial export --format hf`; the field names follow transformers' conventions where one
exists (hidden_size, num_attention_heads, ...), and the routing fields mirror radial_jax's
`model`, `router` and `routing` config sections.
"""

from transformers import PretrainedConfig

_CHOICES = {
    "kv_skip": ("mask", "carry"),
    "routing_policy": ("token_choice", "fixed"),
    "routing_reuse": ("allow", "forbid"),
    "routing_order": ("free", "monotonic"),
    "routing_skip": ("allow", "forbid", "learned"),
    "routing_gate": ("prob", "straight_through"),
}


class RadialConfig(PretrainedConfig):
    """A radial language model: `prefix_layers` dense blocks, then `routing_steps` steps in which every
    token runs one (or `routing_top_k`) of `pool_size` shared blocks, or skips.

    Blocks are Llama-style (RMSNorm, RoPE, grouped-query attention, SwiGLU, no biases). The router
    is an MLP of width `router_hidden` (own weights per step if `router_per_step`, else shared
    weights plus a step embedding). Routing fields:
      kv_skip: at a step, positions not processed there are masked from attention (`mask`), or
        show their most recent keys/values from an earlier step (`carry`);
      routing_policy: `token_choice` (the router picks) or `fixed` (step t runs layer t mod P);
      routing_reuse: may a token run the same pool layer at two steps (`allow`/`forbid`);
      routing_order: `monotonic`: a token's layer index never decreases;
      routing_skip: `allow` (skip competes with the layers), `forbid` (never skip while a layer is
        left), `learned` (skip where the router's P(skip) > 1/2, layers chosen among layers only);
      routing_gate: a block's residual update is scaled by its router probability (`prob`) or
        by 1 (`straight_through`).
    `capacity_factor` is training's (each pool layer took at most capacity_factor * seq_len /
    pool_size tokens per step); this model, like radial_jax's inference, has no capacity limit.
    """

    model_type = "radial"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(self, vocab_size=258, hidden_size=256, intermediate_size=704, num_attention_heads=4,
                 num_key_value_heads=4, head_dim=64, rope_theta=10000.0, rms_norm_eps=1e-6,
                 prefix_layers=0, pool_size=4, routing_steps=4, kv_skip="mask", router_hidden=64,
                 router_per_step=True, routing_policy="token_choice", routing_top_k=1,
                 routing_reuse="allow", routing_order="free", routing_skip="allow",
                 routing_gate="prob", max_position_embeddings=2048, initializer_range=0.02,
                 use_cache=True, tie_word_embeddings=True, capacity_factor=1.0, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.prefix_layers = prefix_layers
        self.pool_size = pool_size
        self.routing_steps = routing_steps
        self.kv_skip = kv_skip
        self.router_hidden = router_hidden
        self.router_per_step = router_per_step
        self.routing_policy = routing_policy
        self.routing_top_k = routing_top_k
        self.routing_reuse = routing_reuse
        self.routing_order = routing_order
        self.routing_skip = routing_skip
        self.routing_gate = routing_gate
        self.capacity_factor = capacity_factor
        # The deepest a token goes, and the KV cache's slots: one per prefix layer and routing step.
        self.num_hidden_layers = prefix_layers + routing_steps
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"RadialConfig: {key}={getattr(self, key)!r} is not supported; "
                                 f"choose one of {', '.join(allowed)}")
        if not 1 <= routing_top_k <= pool_size:
            raise ValueError(f"RadialConfig: routing_top_k={routing_top_k} must be in [1, pool_size="
                             f"{pool_size}]")
        if num_attention_heads % num_key_value_heads:
            raise ValueError(f"RadialConfig: num_attention_heads={num_attention_heads} is not a "
                             f"multiple of num_key_value_heads={num_key_value_heads}")
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
