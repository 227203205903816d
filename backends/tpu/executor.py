"""TpuExecutor: the Executor contract in JAX. One jitted step per (token bucket, request
bucket): the model forward with the KV write (caches donated), then the logits of the
sampled rows; sampling is a second jitted call. Runs on a TPU, or on JAX's CPU device when
asked for by name.
"""

from __future__ import annotations

import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from quire.backends.tpu import model as llama
from quire.backends.tpu import reference
from quire.backends.tpu.attention import default_attention, make_attention
from quire.backends.tpu.kernel import KernelParams
from quire.backends.tpu.metadata import build_metadata
from quire.backends.tpu.sampler import host_rows, sample
from quire.core.batch import Batch
from quire.core.config import EngineConfig
from quire.core.executor import Capabilities, Executor, ModelInfo, ModelOutput
from quire.core.kv_groups import KVCacheGroup, layer_slots
from quire.core.sizing import resolve_dtype
from quire.models.config import (
    BUILTIN_ARCHITECTURES,
    ModelArchConfig,
    architecture_name,
    model_info,
    parse_arch_config,
)

logger = logging.getLogger(__name__)

JAX_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)
REQUEST_BUCKETS = (8, 16, 32, 64, 128, 256)
_LOGPROB_BUCKETS = (1, 5, 20)


class TpuExecutor(Executor):
    def __init__(self, config: EngineConfig, extra_models: dict | None = None,
                 extra_quantization: dict | None = None) -> None:
        super().__init__(config, extra_models, extra_quantization)
        self.attention_choice = default_attention()
        self.kernel_params = KernelParams()
        self.params: llama.Params | None = None
        self.kv_caches: list[llama.KVCache] = []
        self.cfg: ModelArchConfig | None = None
        self._step = None
        self._key = jax.random.key(config.seed)
        self.mesh = None  # a jax.sharding.Mesh under tensor parallelism (sharding.py)
        if jax.default_backend() != "tpu":
            logger.warning("no TPU here: the tpu backend runs on JAX's %s device with %s "
                           "attention (for testing; slow)", jax.default_backend(),
                           self.attention_choice)

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            dtypes=("float32", "bfloat16"),
            default_dtype="bfloat16",
            block_sizes=(16, 32, 64, 128),
            token_buckets=TOKEN_BUCKETS,
            request_buckets=REQUEST_BUCKETS,
            max_num_seqs=REQUEST_BUCKETS[-1],
            fixed_block_table_width=True,  # one compiled shape per bucket pair
            hybrid_kv_cache=True,
        )

    @classmethod
    def tensor_parallel(cls, config: EngineConfig, args: tuple) -> Executor:
        """One process, a device mesh of tensor_parallel_size devices (sharding.py)."""
        from quire.backends.tpu.sharding import make_mesh

        mesh = make_mesh(config.tensor_parallel_size)
        executor = cls(*args)
        executor.mesh = mesh
        return executor

    def load_model(self, model_path: str, dtype: str) -> ModelInfo:
        from quire.models.checkpoint import open_checkpoint
        from quire.models.hf_quant import check_requested, quant_method

        if self.config.quantization not in (None, "none", "gguf", "gptq", "awq", "int8"):
            raise ValueError(f"quantization {self.config.quantization!r} is not available on "
                             "the tpu backend, which serves GGUF, GPTQ and AWQ checkpoints "
                             "and --quantization int8 / none; use a torch-family backend "
                             "such as --backend cpu")
        start = time.perf_counter()
        # GGUF, GPTQ and AWQ weights stay quantized in the params pytree (model.QuantMatrix)
        # unless --quantization none.
        raw, weights = open_checkpoint(model_path,
                                       keep_quantized=self.config.quantization != "none")
        check_requested(self.config.quantization, quant_method(raw))
        arch = architecture_name(raw)
        if arch in self.extra_models and arch not in BUILTIN_ARCHITECTURES:
            raise ValueError(f"model architecture {arch!r} comes from a plugin "
                             "(quire_register_models), which registers torch modules; the tpu "
                             "backend runs only its built-in JAX models "
                             f"({', '.join(BUILTIN_ARCHITECTURES)}). Serve it on a "
                             "torch-family backend such as --backend cpu")
        if arch not in BUILTIN_ARCHITECTURES:
            raise ValueError(f"model architecture {arch or raw.get('model_type')!r} is not "
                             f"supported by the tpu backend; supported: "
                             f"{', '.join(BUILTIN_ARCHITECTURES)}")
        cfg = parse_arch_config(raw, arch)
        dtype = resolve_dtype(dtype, cfg.torch_dtype, self.capabilities())
        self.params = llama.load_params(cfg, weights, JAX_DTYPES[dtype])
        if self.config.quantization == "int8":  # TPU's native int8 matmul (int8.py)
            from quire.backends.tpu.int8 import activations_quantized, quantize_params

            self.params, nbytes = quantize_params(self.params)
            logger.info("--quantization int8: layer projections in int8 (%.1f MiB), "
                        "activations %s", nbytes / 2**20,
                        "int8 per token" if activations_quantized() else "not quantized")
        if self.mesh is not None:
            from quire.backends.tpu.sharding import shard_params

            self.params = shard_params(self.params, self.mesh)
        self.cfg = cfg
        self.info = model_info(cfg, dtype)
        logger.info("loaded %s (%s) from %s in %.1fs on %s", arch, dtype, model_path,
                    time.perf_counter() - start, jax.devices()[0].platform)
        return self.info

    def allocate_kv_cache(self, num_blocks: int, block_size: int,
                          kv_groups: tuple[KVCacheGroup, ...] = ()) -> None:
        """kv_groups (Capabilities.hybrid_kv_cache): num_blocks pages shared by the groups;
        a cache per page slot, which the layers in that slot of each group share, and each
        layer attends through its group's metadata."""
        assert self.info is not None and self.cfg is not None, "load_model first"
        layer_group, layer_slot = layer_slots(kv_groups, self.info.num_layers)
        shape = (self.info.num_kv_heads, num_blocks, block_size, self.info.head_size)
        dtype = JAX_DTYPES[self.info.dtype]
        self.kv_caches = [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
                          for _ in range(max(layer_slot) + 1)]
        if self.mesh is not None:
            from quire.backends.tpu.sharding import cache_sharding, per_shard_attention

            self.kv_caches = jax.device_put(self.kv_caches,
                                            cache_sharding(self.mesh, self.info.num_kv_heads))
        cfg = self.cfg
        attention = [make_attention(self.attention_choice, cfg.attn_scale or cfg.head_size**-0.5,
                                    cfg.layer_window(i), cfg.attn_soft_cap, self.kernel_params)
                     for i in range(cfg.num_layers)]
        if self.mesh is not None and self.attention_choice != "reference":
            attention = [per_shard_attention(a, self.mesh, cfg.num_kv_heads) for a in attention]
        forward = functools.partial(llama.forward, cfg=cfg, attention=attention,
                                    write_kv=reference.write_kv,
                                    layer_group=tuple(layer_group),
                                    layer_slot=tuple(layer_slot))
        self._step = jax.jit(functools.partial(_step, forward, cfg.final_soft_cap),
                             donate_argnums=(1,))

    def execute(self, batch: Batch) -> ModelOutput:
        assert self.params is not None and self._step is not None, \
            "load_model and allocate_kv_cache first"
        t0 = time.perf_counter()
        num_rows = len(batch.query_start_loc) - 1
        # Capabilities.fixed_block_table_width: the tables' width never adds a compilation.
        md = tuple(build_metadata(batch.query_start_loc, batch.seq_lens,
                                  *batch.group_tables(g), self.kernel_params.query_block)
                   for g in range(batch.num_kv_groups))
        num_sampled = len(batch.logits_indices)
        if num_sampled > num_rows:  # draft rows (speculative decoding): a larger bucket
            num_rows = next((b for b in REQUEST_BUCKETS if b >= num_sampled),
                            1 << (num_sampled - 1).bit_length())
        logits_indices = np.zeros(num_rows, np.int32)
        logits_indices[:num_sampled] = batch.logits_indices
        logits, self.kv_caches = self._step(self.params, self.kv_caches, batch.input_ids,
                                            batch.positions, md, logits_indices)
        t1 = time.perf_counter()
        if num_sampled == 0:
            return ModelOutput(np.zeros(0, dtype=np.int64), timings={"forward": t1 - t0})
        sb = batch.sampling
        k = max(sb.max_num_logprobs, 0)
        num_logprobs = 0 if sb.max_num_logprobs < 0 else \
            next((b for b in _LOGPROB_BUCKETS if b >= max(k, 1)), k)
        self._key, key = jax.random.split(self._key)
        token_ids, sampled_lp, top_ids, top_lp = sample(
            logits, host_rows(sb, num_rows), key, all_greedy=sb.all_greedy,
            filter_top=bool((sb.top_k > 0).any() or (sb.top_p < 1.0).any()),
            num_logprobs=num_logprobs)
        out = ModelOutput(np.asarray(token_ids)[:num_sampled].astype(np.int64))
        t2 = time.perf_counter()
        out.timings = {"forward": t1 - t0, "sample": t2 - t1}
        if num_logprobs:
            width = max(k, 1)
            out.sampled_logprobs = np.asarray(sampled_lp)[:num_sampled]
            out.top_token_ids = np.asarray(top_ids)[:num_sampled, :width].astype(np.int64)
            out.top_logprobs = np.asarray(top_lp)[:num_sampled, :width]
        return out

    def num_compilations(self) -> int:
        """Distinct compiled step programs so far (bounded by the shape buckets)."""
        return self._step._cache_size() if self._step is not None else 0

    def shutdown(self) -> None:
        self.params = None
        self.kv_caches = []
        self._step = None


def _step(forward, final_soft_cap, params, kv_caches, input_ids, positions, md,
          logits_indices):
    hidden, kv_caches = forward(params, kv_caches, input_ids, positions, md)
    return llama.compute_logits(params, hidden[logits_indices], final_soft_cap), kv_caches
