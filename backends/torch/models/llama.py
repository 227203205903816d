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
from quire.backends.torch.model_config import ModelArchConfig
from quire.backends.torch.rope import ApplyRotary, RotaryEmbedding


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
    _FUSED = {  # HF name piece -> (our param, shard index)
        ".q_proj.": (".qkv_proj.", 0), ".k_proj.": (".qkv_proj.", 1),
        ".v_proj.": (".qkv_proj.", 2), ".gate_proj.": (".gate_up_proj.", 0),
        ".up_proj.": (".gate_up_proj.", 1),
    }
    _RENAMES = {".self_attn.o_proj.": ".o_proj.", ".mlp.down_proj.": ".down_proj.",
                ".self_attn.q_norm.": ".q_norm.", ".self_attn.k_norm.": ".k_norm."}

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in; raises if any parameter is left unset."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if "rotary_emb" in name or (self.cfg.tie_word_embeddings and name == "lm_head.weight"):
                continue
            target, shard = self._target(name)
            if target not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no place in "
                                 f"{self.cfg.architecture}")
            param = params[target]
            if shard is None:
                if param.shape != tensor.shape:
                    raise ValueError(f"{name}: shape {tuple(tensor.shape)} != {tuple(param.shape)}")
                param.data.copy_(tensor)
            else:
                self._copy_shard(target, param, tensor, shard)
            loaded.add(target if shard is None else f"{target}#{shard}")
        missing = [n for n in self._expected_keys() if n not in loaded]
        if missing:
            raise ValueError(f"checkpoint is missing tensors: {missing[:8]}")

    def _target(self, name: str) -> tuple[str, int | None]:
        for piece, (ours, shard) in self._FUSED.items():
            if piece in name:
                return name.replace(".self_attn" + piece, ours).replace(".mlp" + piece, ours), shard
        for piece, ours in self._RENAMES.items():
            if piece in name:
                return name.replace(piece, ours), None
        return name, None

    def _copy_shard(self, target: str, param: torch.Tensor, tensor: torch.Tensor,
                    shard: int) -> None:
        if ".qkv_proj." in target:
            sizes = self.layers[0].qkv_split
        else:
            sizes = (self.cfg.intermediate_size,) * 2
        offset = sum(sizes[:shard])
        dest = param.data[offset : offset + sizes[shard]]
        if dest.shape != tensor.shape:
            raise ValueError(f"{target} shard {shard}: shape {tuple(tensor.shape)} != "
                             f"{tuple(dest.shape)}")
        dest.copy_(tensor)

    def _expected_keys(self) -> list[str]:
        keys = []
        for name, _ in self.named_parameters():
            if ".qkv_proj." in name:
                keys += [f"{name}#{i}" for i in range(3)]
            elif ".gate_up_proj." in name:
                keys += [f"{name}#{i}" for i in range(2)]
            else:
                keys.append(name)
        return keys
