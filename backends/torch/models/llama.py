"""Every built-in decoder in one file, driven by ModelArchConfig: Llama (llama3 rope),
Mistral, Qwen2 (qkv bias), Qwen3 (q/k norm), Gemma 2 and 3 (soft-capping, alternating
sliding-window layers, sandwich norms, GeGLU, scaled embeddings, per-layer-type rope),
Phi-3 (LongRoPE, partial rotary), and the mixture-of-experts ones, Mixtral and Qwen3-MoE
(MLP replaced by moe.py's experts). Tokens arrive packed, [T, hidden]; attention goes
through an AttentionImpl.

q/k/v and gate/up projections are fused at load time (one matmul each).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from quire.backends.torch.attention import AttentionImpl, AttentionMetadata
from quire.backends.torch.models.moe import MoEExperts
from quire.backends.torch.rope import ApplyRotary, RotaryEmbedding
from quire.models.config import ModelArchConfig
from quire.models.quant import PackedExperts, PackedWeight, concat_rows
from quire.models.rope import rope_spec
from quire.models.weight_map import (
    WeightTarget,
    covered,
    expected_targets,
    is_norm,
    shard_sizes,
    weight_target,
)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class SiluAndMul(nn.Module):
    """[T, 2I] (gate | up) -> silu(gate) * up [T, I]. A module so backends can fuse it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


class GeluTanhAndMul(nn.Module):
    """[T, 2I] (gate | up) -> gelu_tanh(gate) * up [T, I] (Gemma's GeGLU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.gelu(gate, approximate="tanh") * up


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else cap * torch.tanh(x / cap)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelArchConfig, attn: AttentionImpl, index: int) -> None:
        super().__init__()
        self.rope_index = int(cfg.layer_rope(index) != (cfg.rope_theta, cfg.rope_scaling))
        self.num_heads, self.num_kv_heads, self.head_size = (
            cfg.num_heads, cfg.num_kv_heads, cfg.head_size)
        q_size, kv_size = cfg.num_heads * cfg.head_size, cfg.num_kv_heads * cfg.head_size
        self.qkv_split = (q_size, kv_size, kv_size)
        self.qkv_proj = nn.Linear(cfg.hidden_size, q_size + 2 * kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(q_size, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_size, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_size, cfg.rms_norm_eps) if cfg.qk_norm else None
        if cfg.is_moe_layer(index):
            self.router = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
            self.experts = MoEExperts(cfg.num_experts, cfg.hidden_size,
                                      cfg.moe_intermediate_size, cfg.num_experts_per_tok,
                                      cfg.norm_topk_prob, cfg.hidden_act)
        else:
            self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size,
                                          bias=False)
            self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
            self.act = SiluAndMul() if cfg.hidden_act == "silu" else GeluTanhAndMul()
        self.rotary = ApplyRotary()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.sandwich = cfg.sandwich_norms
        if cfg.sandwich_norms:  # Gemma: the attention output is normed, the MLP's too
            self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = attn
        # A backend may give the layer a faster path for some steps (the cpu backend's fused
        # decode layer): called with forward's arguments, it returns the output or None.
        self.fast_path: Callable[..., torch.Tensor | None] | None = None

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "experts"):
            return self.experts(h, self.router(h))
        return self.down_proj(self.act(self.gate_up_proj(h)))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                kv_cache: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
        """x [T, hidden]; rope: RotaryEmbedding.table() of the tokens' positions."""
        if self.fast_path is not None:
            out = self.fast_path(x, rope, kv_cache, md)
            if out is not None:
                return out
        num_tokens = x.shape[0]
        q, k, v = self.qkv_proj(self.input_layernorm(x)).split(self.qkv_split, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_size)
        k = k.view(num_tokens, self.num_kv_heads, self.head_size)
        v = v.view(num_tokens, self.num_kv_heads, self.head_size)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(q, k, *rope)
        self.attn.write_kv(k, v, kv_cache, md.slot_mapping)
        attn_out = self.o_proj(self.attn.forward(q, kv_cache, md).reshape(num_tokens, -1))
        if not self.sandwich:
            x = x + attn_out
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + self.post_attention_layernorm(attn_out)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelArchConfig, attention_cls: type[AttentionImpl],
                 max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        scale = cfg.attn_scale or cfg.head_size**-0.5
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, attention_cls(cfg.num_heads, cfg.num_kv_heads, cfg.head_size,
                                            scale, cfg.layer_window(i), cfg.attn_soft_cap), i)
            for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # One rotary table per distinct rope (Gemma 3: global and local layers).
        ropes = [(cfg.rope_theta, cfg.rope_scaling)]
        if any(layer.rope_index for layer in self.layers):
            ropes.append(cfg.layer_rope(next(i for i, layer in enumerate(self.layers)
                                             if layer.rope_index)))
        self.ropes = [RotaryEmbedding(rope_spec(cfg.rotary_dim, theta, scaling), max_positions)
                      for theta, scaling in ropes]
        # A backend may run the whole stack of layers for some steps in one call (the cpu
        # backend's fused decode): called with (x, tables, kv_caches, md), returns the last
        # layer's output or None.
        self.layers_fast_path: Callable[..., torch.Tensor | None] | None = None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], md: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden]."""
        x = self.embed_tokens(input_ids)
        if self.cfg.embed_scale is not None:
            x = x * torch.tensor(self.cfg.embed_scale, dtype=x.dtype)
        tables = [rope.table(positions) for rope in self.ropes]
        if self.layers_fast_path is not None:
            out = self.layers_fast_path(x, tables, kv_caches, md)
            if out is not None:
                return self.norm(out)
        for i, (layer, kv_cache) in enumerate(zip(self.layers, kv_caches)):
            x = layer(x, tables[layer.rope_index], kv_cache, md.for_layer(i))
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """hidden [S, H] -> fp32 logits [S, V] (None on the ranks of a tensor-parallel model
        other than 0, which alone samples)."""
        logits = self.lm_head(hidden)
        return None if logits is None else soft_cap(logits.float(), self.cfg.final_soft_cap)

    # -- weights ---------------------------------------------------------------------------
    # load_weights accepts quire.models.quant.PackedWeight for linear and embedding weights.
    supports_packed_weights = True

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor | PackedWeight
                                                   | PackedExperts]]
                     ) -> dict[str, PackedWeight | PackedExperts]:
        """Copy HF-named tensors in (fused as quire.models.weight_map says); raises if any
        parameter is left unset. Returns the parameters that came packed (quantized), fused
        like the dense ones, by parameter name: the executor swaps their modules (a layer's
        experts when both their stacks came packed, as PackedExperts)."""
        params = dict(self.named_parameters())
        loaded: set[WeightTarget] = set()
        packed: dict[str, dict[int | None, PackedWeight]] = {}
        experts: dict[str, dict[int, dict[int | None, PackedWeight]]] = {}
        for name, tensor in weights:
            target = weight_target(name, self.cfg)
            if target is None:
                continue
            loaded.update(covered(target, self.cfg))
            if isinstance(tensor, PackedExperts):  # a whole stack, one weight per expert
                for e, w in enumerate(tensor.experts):
                    experts.setdefault(target.name, {}).setdefault(e, {})[target.shard] = w
                continue
            if isinstance(tensor, PackedWeight):
                if target.expert is not None:  # one expert's projection (or half of w13)
                    experts.setdefault(target.name, {}).setdefault(
                        target.expert, {})[target.shard] = tensor
                    continue
                if not target.part.startswith("experts."):
                    packed.setdefault(target.name, {})[target.shard] = tensor
                    continue
                tensor = torch.from_numpy(tensor.dequantize())
            param = params[target.name].data
            if target.expert is not None:
                param = param[target.expert]
            if target.shard is not None:
                sizes = shard_sizes(self.cfg, target.part)
                offset = sum(sizes[: target.shard])
                param = param[offset : offset + sizes[target.shard]]
            if param.shape != tensor.shape:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} != {tuple(param.shape)}")
            param.copy_(tensor)
            if self.cfg.norm_offset and is_norm(target):
                param.add_(1.0)  # Gemma stores w - 1 and computes x * (1 + w)
        missing = [t.name for t in expected_targets(self.cfg) if t not in loaded]
        if missing:
            raise ValueError(f"checkpoint is missing tensors: {missing[:8]}")
        out: dict[str, PackedWeight | PackedExperts] = {
            name: fused for name, shards in packed.items()
            if (fused := self._fuse_packed(params[name], name, shards)) is not None}
        stacks = {name: self._fuse_experts(name, by_expert)
                  for name, by_expert in experts.items()}
        for name, stack in stacks.items():
            pair = name[:-3] + "w2" if name.endswith(".w13") else name[:-2] + "w13"
            if stack is not None and stacks.get(pair) is not None:
                out[name] = stack  # both of the layer's stacks packed: served packed
            else:  # dense after all: each expert's shards dequantized into the parameter
                self._dequantize_experts(params[name], name, experts[name])
        return out

    def _fuse_experts(self, name: str, by_expert: dict[int, dict[int | None, PackedWeight]]
                      ) -> PackedExperts | None:
        """One PackedWeight per expert ([2I, H] gate | up, or [H, I]); None when an expert
        is missing or its shards cannot be fused packed."""
        part = name.split(".", 2)[2]
        sizes = shard_sizes(self.cfg, part) if part == "experts.w13" else None
        fused = []
        for e in range(self.cfg.num_experts):
            shards = by_expert.get(e, {})
            order = [None] if None in shards else list(range(len(sizes or [None])))
            if any(s not in shards for s in order):
                return None
            try:
                fused.append(concat_rows([shards[s] for s in order]))
            except ValueError:
                return None
        return PackedExperts(tuple(fused))

    def _dequantize_experts(self, param: nn.Parameter, name: str,
                            by_expert: dict[int, dict[int | None, PackedWeight]]) -> None:
        part = name.split(".", 2)[2]
        sizes = shard_sizes(self.cfg, part) if part == "experts.w13" else None
        for e, shards in by_expert.items():
            for s, w in shards.items():
                dense = torch.from_numpy(w.dequantize())
                if s is None or sizes is None:
                    param.data[e].copy_(dense)
                else:
                    offset = sum(sizes[:s])
                    param.data[e, offset : offset + sizes[s]].copy_(dense)

    def _fuse_packed(self, param: nn.Parameter, name: str,
                     shards: dict[int | None, PackedWeight]) -> PackedWeight | None:
        """One packed weight for a (possibly fused) parameter; when its shards cannot be
        fused packed (some dense, or formats that differ) they are dequantized into the dense
        parameter and None is returned."""
        order = sorted(shards, key=lambda s: -1 if s is None else s)
        part = name.split(".", 2)[2] if name.startswith("layers.") else name
        sizes = None if None in shards else shard_sizes(self.cfg, part)
        expected = 1 if sizes is None else len(sizes)
        if len(order) == expected:
            try:
                return concat_rows([shards[s] for s in order])
            except ValueError:
                pass
        for s in order:
            dense = torch.from_numpy(shards[s].dequantize())
            if s is None or sizes is None:
                param.data.copy_(dense)
            else:
                offset = sum(sizes[:s])
                param.data[offset : offset + sizes[s]].copy_(dense)
        return None
