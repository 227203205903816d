"""TorchExecutor: the Executor contract for every torch backend; a backend picks its device
and its AttentionImpl."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from quire.backends.torch import kv_quant
from quire.backends.torch.attention import AttentionImpl, AttentionMetadata
from quire.backends.torch.loader import open_checkpoint
from quire.backends.torch.models.registry import ModelFactory, resolve_architecture
from quire.backends.torch.quantization import (
    METHODS,
    LinearMethod,
    QuantKernel,
    dequantize_packed,
    quantize_dense,
    quantize_modules,
)
from quire.backends.torch.sampler import Sampler
from quire.backends.torch.workspace import Workspace
from quire.core.batch import Batch
from quire.core.config import EngineConfig
from quire.core.executor import Executor, ModelInfo, ModelOutput
from quire.core.kv_groups import KVCacheGroup, layer_slots
from quire.core.sizing import resolve_dtype
from quire.models.config import model_info, parse_arch_config
from quire.models.hf_quant import check_requested, quant_method
from quire.models.tensor_parallel import TPShard, plan
from quire.models.weight_map import weight_target

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TorchExecutor(Executor):
    attention_cls: type[AttentionImpl]
    device = torch.device("cpu")

    # The backend's packed-weight arithmetic (quantization.py); None: quantized checkpoint
    # tensors are dequantized at load.
    quant_kernel: QuantKernel | None = None
    # The torch.distributed backend tensor-parallel ranks meet through: gloo on the host;
    # a device backend names its own ("nccl" on cuda, RCCL's "nccl" on rocm, a plugin's).
    tp_communicator = "gloo"

    def __init__(self, config: EngineConfig,
                 extra_models: dict[str, ModelFactory] | None = None,
                 extra_quantization: dict | None = None) -> None:
        super().__init__(config, extra_models, extra_quantization)
        self.model: torch.nn.Module | None = None
        self.kv_caches: list[torch.Tensor] = []
        self.layer_group: list[int] = []  # each layer's KV group (quire.core.kv_groups)
        self.sampler = Sampler(config.seed)
        self.workspace = Workspace(self.device)
        # Set by the tensor-parallel executor (multiproc.py) before load_model: this rank's
        # place and its process group's collectives (parallel.Communicator).
        self.tp: TPShard | None = None
        self.comm = None

    @classmethod
    def tensor_parallel(cls, config: EngineConfig, args: tuple) -> Executor:
        """One process per rank on this host (multiproc.py), or Ray actors (ray_executor.py)
        with --distributed-executor-backend ray; collectives through tp_communicator."""
        if config.distributed_executor_backend == "ray":
            from quire.backends.torch.ray_executor import RayExecutor

            return RayExecutor(cls, config, args, config.tensor_parallel_size)
        from quire.backends.torch.multiproc import MultiprocExecutor

        return MultiprocExecutor(cls, config, args, config.tensor_parallel_size)

    def load_model(self, model_path: str, dtype: str) -> ModelInfo:
        start = time.perf_counter()
        method = self.linear_method()
        raw, weights = open_checkpoint(model_path, keep_quantized=method is not None)
        check_requested(self.config.quantization, quant_method(raw))
        arch, factory = resolve_architecture(raw, self.extra_models)
        cfg = parse_arch_config(raw, arch)
        dtype = resolve_dtype(dtype, cfg.torch_dtype, self.capabilities())
        max_len = self.config.max_model_len or cfg.max_position_embeddings
        torch.manual_seed(self.config.seed)
        self._use_kv_quant()
        shard_plan = None
        if self.tp is not None and self.tp.size > 1:
            shard_plan = plan(cfg, self.tp)
            weights = _sliced(weights, shard_plan)
        with self.device:
            model = factory(cfg if shard_plan is None else shard_plan.local_config(),
                            self.attention_cls, max_len)
        if method is not None and self.config.quantization == "int8":
            weights = quantize_dense(weights)
        if method is not None and not getattr(model, "supports_packed_weights", False):
            weights = dequantize_packed(weights, arch)
        packed = model.load_weights(weights) or {}
        self.model = model.to(device=self.device, dtype=TORCH_DTYPES[dtype]).eval()
        self.info = model_info(cfg, dtype)
        if shard_plan is not None:  # this rank's KV heads are what its cache holds
            self.info = dataclasses.replace(self.info, num_kv_heads=shard_plan.num_kv_heads)
        quantized = ""
        if packed:
            assert method is not None
            nbytes = quantize_modules(self.model, packed, method, TORCH_DTYPES[dtype])
            formats = sorted({w.source for w in packed.values()})
            quantized = (f"; {len(packed)} weights kept quantized ({', '.join(formats)}): "
                         f"{nbytes / (1 << 20):.0f} MiB")
        if shard_plan is not None:
            from quire.backends.torch.parallel import parallelize

            parallelize(self.model, shard_plan, self.comm)
            quantized += f"; tensor-parallel rank {self.tp.rank} of {self.tp.size}"
        logger.info("loaded %s (%s) from %s in %.1fs%s", arch, dtype, model_path,
                    time.perf_counter() - start, quantized)
        return self.info

    def _use_kv_quant(self) -> None:
        """--kv-cache-dtype int8 | fp8_e4m3: the attention class for the model's layers
        becomes a subclass with kv_quant set (before the model is built)."""
        kind = getattr(self.config, "kv_cache_dtype", "auto")
        if kind == "auto" or self.attention_cls.kv_quant == kind:
            return
        if kind not in self.attention_cls.kv_quant_dtypes:
            raise ValueError(f"kv_cache_dtype {kind!r} is not supported by "
                             f"{self.attention_cls.__name__}")
        self.attention_cls = type(f"{self.attention_cls.__name__}KV8", (self.attention_cls,),
                                  {"kv_quant": kind})

    def linear_method(self) -> LinearMethod | None:
        """The quantization method serving this load (None: dense weights only)."""
        name = self.config.quantization if self.config is not None else None
        methods = {**METHODS, **self.extra_quantization}
        if name == "none":
            return None
        if name is not None and name not in methods:
            raise ValueError(f"unknown quantization method {name!r}; available: "
                             f"{', '.join(sorted(methods))}, or 'none'")
        if self.quant_kernel is None:
            if name is not None and name not in self.extra_quantization:
                raise ValueError(f"quantization {name!r} has no kernel on this backend; use "
                                 "--quantization none (dequantize at load) or the cpu backend")
            if name is None:
                return None
        return methods[name or "gguf"](self.quant_kernel)

    def allocate_kv_cache(self, num_blocks: int, block_size: int,
                          kv_groups: tuple[KVCacheGroup, ...] = ()) -> None:
        """kv_groups (Capabilities.hybrid_kv_cache): num_blocks pages shared by the groups;
        layers in the same slot of different groups share one tensor (their groups never
        hold the same page), and each layer attends through its group's tables."""
        assert self.info is not None, "load_model first"
        row = self.info.head_size
        dtype = TORCH_DTYPES[self.info.dtype]
        if self.attention_cls.kv_quant is not None:  # 8-bit rows: values, then a scale
            row, dtype = kv_quant.row_bytes(self.info.head_size), torch.uint8
        self.layer_group, slot = layer_slots(kv_groups, self.info.num_layers)
        shape = self.attention_cls.kv_cache_shape(num_blocks, block_size,
                                                  self.info.num_kv_heads, row)
        tensors = [torch.zeros(shape, dtype=dtype, device=self.device)
                   for _ in range(max(slot) + 1)]
        self.kv_caches = [tensors[s] for s in slot]

    @torch.inference_mode()
    def execute(self, batch: Batch) -> ModelOutput:
        assert self.model is not None and self.kv_caches, "load_model and allocate_kv_cache first"
        t0 = time.perf_counter()
        hidden = self.model(*self.model_inputs(batch))
        t1 = time.perf_counter()
        if len(batch.logits_indices) == 0:
            return ModelOutput(np.zeros(0, dtype=np.int64), timings={"forward": t1 - t0})
        logits = self.model.compute_logits(hidden[torch.from_numpy(batch.logits_indices).long()])
        if logits is None:  # a tensor-parallel rank other than 0: rank 0 samples
            return ModelOutput(np.zeros(0, dtype=np.int64))
        t2 = time.perf_counter()
        return self.sample(logits, batch, {"forward": t1 - t0, "logits": t2 - t1})

    def model_inputs(self, batch: Batch) -> tuple:
        """(input_ids, positions, kv_caches, metadata) for the model, on this device."""
        dev = self.device
        query_start_loc = torch.from_numpy(batch.query_start_loc).to(dev)
        seq_lens = torch.from_numpy(batch.seq_lens).to(dev)
        groups = []
        for g in range(batch.num_kv_groups):
            block_tables, slot_mapping = batch.group_tables(g)
            groups.append(AttentionMetadata(
                slot_mapping=torch.from_numpy(slot_mapping).to(dev),
                query_start_loc=query_start_loc,
                seq_lens=seq_lens,
                block_tables=torch.from_numpy(block_tables).to(dev),
                query_start_loc_host=batch.query_start_loc,
                seq_lens_host=batch.seq_lens,
                num_reqs=batch.num_reqs,
                max_query_len=batch.max_query_len,
                max_seq_len=batch.max_seq_len,
                workspace=self.workspace,
            ))
        md = groups[0]
        if len(groups) > 1:
            md.layer_metadata = [groups[g] for g in self.layer_group]
        input_ids = torch.from_numpy(batch.input_ids).to(dev).long()
        positions = torch.from_numpy(batch.positions).to(dev).long()
        return input_ids, positions, self.kv_caches, md

    def sample(self, logits: torch.Tensor, batch: Batch, timings: dict[str, float]
               ) -> ModelOutput:
        """logits [S, V] fp32 of the sampled rows -> the step's ModelOutput."""
        t0 = time.perf_counter()
        sampled = self.sampler(logits.cpu(), batch.sampling)
        timings["sample"] = time.perf_counter() - t0
        out = ModelOutput(sampled.token_ids.numpy().astype(np.int64), timings=timings)
        if sampled.sampled_logprobs is not None:
            out.sampled_logprobs = sampled.sampled_logprobs.numpy()
            out.top_token_ids = sampled.top_token_ids.numpy()
            out.top_logprobs = sampled.top_logprobs.numpy()
        return out

    def shutdown(self) -> None:
        self.model = None
        self.kv_caches = []


def _sliced(weights: Iterable[tuple[str, object]], shard_plan) -> Iterator[tuple[str, object]]:
    """This rank's slice of every checkpoint tensor (quire.models.tensor_parallel); a packed
    weight split along its inputs comes back dense (numpy), made a tensor here."""
    for name, w in weights:
        target = weight_target(name, shard_plan.cfg)
        if target is not None:
            w = shard_plan.slice(target, w)
            if isinstance(w, np.ndarray):
                w = torch.from_numpy(np.ascontiguousarray(w))
        yield name, w
