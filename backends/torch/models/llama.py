"""The Llama family in one file: Llama (llama3 rope), Mistral, Qwen2 (qkv bias), Qwen3
(q/k norm). Tokens arrive packed, [T, hidden]; attention goes through an AttentionImpl.

q/k/v and gate/up projections are fused at load time (one matmul each).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from quire.backends.torch.attention import AttentionImpl, AttentionMetadata
from quire.backends.torch.rope import ApplyRotary, RotaryEmbedding
from quire.models.config import ModelArchConfig
from quire.models.quant import PackedWeight, concat_rows
from quire.models.weight_map import WeightTarget, expected_targets, shard_sizes, weight_target


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


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelArchConfig, attn: AttentionImpl) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_size = (
            cfg.num_heads, cfg.num_kv_heads, cfg.head_size)
        q_size, kv_size = cfg.num_heads * cfg.head_size, cfg.num_kv_heads * cfg.head_size
        self.qkv_split = (q_size, kv_size, kv_size)
        self.qkv_proj = nn.Linear(cfg.hidden_size, q_size + 2 * kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(q_size, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_size, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_size, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act = SiluAndMul()
        self.rotary = ApplyRotary()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = attn

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                kv_cache: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
        """x [T, hidden]; rope: RotaryEmbedding.table() of the tokens' positions."""
        num_tokens = x.shape[0]
        q, k, v = self.qkv_proj(self.input_layernorm(x)).split(self.qkv_split, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_size)
        k = k.view(num_tokens, self.num_kv_heads, self.head_size)
        v = v.view(num_tokens, self.num_kv_heads, self.head_size)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(q, k, *rope)
        self.attn.write_kv(k, v, kv_cache, md.slot_mapping)
        attn_out = self.attn.forward(q, kv_cache, md)
        x = x + self.o_proj(attn_out.reshape(num_tokens, -1))
        return x + self.down_proj(self.act(self.gate_up_proj(self.post_attention_layernorm(x))))


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelArchConfig, attention_cls: type[AttentionImpl],
                 max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, attention_cls(cfg.num_heads, cfg.num_kv_heads, cfg.head_size,
                                            cfg.head_size**-0.5, cfg.sliding_window))
            for _ in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = RotaryEmbedding(cfg.head_size, max_positions, cfg.rope_theta,
                                    cfg.rope_scaling)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], md: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden]."""
        x = self.embed_tokens(input_ids)
        rope = self.rope.table(positions)
        for layer, kv_cache in zip(self.layers, kv_caches):
            x = layer(x, rope, kv_cache, md)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    # -- weights ---------------------------------------------------------------------------
    # load_weights accepts quire.models.quant.PackedWeight for linear and embedding weights.
    supports_packed_weights = True

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor | PackedWeight]]
                     ) -> dict[str, PackedWeight]:
        """Copy HF-named tensors in (fused as quire.models.weight_map says); raises if any
        parameter is left unset. Returns the parameters that came packed (quantized), fused
        like the dense ones, by parameter name: the executor swaps their modules."""
        params = dict(self.named_parameters())
        loaded: set[WeightTarget] = set()
        packed: dict[str, dict[int | None, PackedWeight]] = {}
        for name, tensor in weights:
            target = weight_target(name, self.cfg)
            if target is None:
                continue
            if isinstance(tensor, PackedWeight):
                packed.setdefault(target.name, {})[target.shard] = tensor
                loaded.add(target)
                continue
            param = params[target.name].data
            if target.shard is not None:
                sizes = shard_sizes(self.cfg, target.part)
                offset = sum(sizes[: target.shard])
                param = param[offset : offset + sizes[target.shard]]
            if param.shape != tensor.shape:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} != {tuple(param.shape)}")
            param.copy_(tensor)
            loaded.add(target)
        missing = [t.name for t in expected_targets(self.cfg) if t not in loaded]
        if missing:
            raise ValueError(f"checkpoint is missing tensors: {missing[:8]}")
        return {name: fused for name, shards in packed.items()
                if (fused := self._fuse_packed(params[name], name, shards)) is not None}

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
