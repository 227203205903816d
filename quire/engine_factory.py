"""From an EngineConfig to a running LLMEngine: plugins, backend, model, KV cache, tokenizer."""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging

from quire.core.config import CacheConfig, EngineConfig, SchedulerConfig
from quire.core.draft_model import DraftModelProposer
from quire.core.engine import LLMEngine
from quire.core.executor import Executor, ModelInfo
from quire.core.kv_groups import num_pages, page_slots, plan_kv_groups, usable_full_blocks
from quire.core.spec_decode import NgramProposer, Proposer, SpecDecoder
from quire.core.structured_outputs import StructuredOutputManager
from quire.default_model import resolve_model
from quire.grammar import LLGuidanceBackend
from quire.plugins.manager import QuirePlugins, load_plugins
from quire.plugins.selection import load_factory, select_backend
from quire.tokenizer import HFTokenizer

logger = logging.getLogger("quire")


def create_engine(config: EngineConfig, plugins: QuirePlugins | None = None) -> LLMEngine:
    plugins = plugins or load_plugins()
    _ensure_logging(plugins.logger_names())
    if not config.model:
        config = dataclasses.replace(config, model=resolve_model(None))
        logger.info("no model given: using the bundled demo model %s", config.model)
    status = select_backend(plugins, config.backend)
    executor_cls = load_factory(status)
    caps = executor_cls.capabilities()
    if config.kv_cache_dtype not in caps.kv_cache_dtypes:
        raise ValueError(f"kv_cache_dtype {config.kv_cache_dtype!r} is not supported by the "
                         f"{status.spec.name!r} backend; choose one of "
                         f"{', '.join(caps.kv_cache_dtypes)}")
    block_size = config.block_size or caps.default_block_size
    if block_size not in caps.block_sizes:
        raise ValueError(f"block_size {block_size} is not supported by backend "
                         f"{status.spec.name!r}; choose one of {caps.block_sizes}")
    executor = _new_executor(executor_cls, config, plugins)
    info = executor.load_model(config.model, config.dtype)
    max_seqs = min(config.max_num_seqs, caps.max_num_seqs or config.max_num_seqs)
    max_tokens = config.resolved_max_num_batched_tokens
    if caps.token_buckets and max_tokens > max(caps.token_buckets):
        logger.warning("max_num_batched_tokens lowered from %d to %d, backend %s's largest "
                       "token bucket", max_tokens, max(caps.token_buckets), status.spec.name)
        max_tokens = max(caps.token_buckets)
    if caps.request_buckets:
        max_seqs = min(max_seqs, max(caps.request_buckets))
    num_blocks = config.num_blocks or executor.profile_num_blocks(
        block_size, config.kv_cache_memory_bytes)
    bytes_per_block = executor.kv_cache_bytes_per_block(block_size)
    gib = num_blocks * bytes_per_block / (1 << 30)
    kv_groups = plan_kv_groups(info.layer_windows) \
        if caps.hybrid_kv_cache and not config.disable_hybrid_kv_cache_manager else ()
    if kv_groups:  # the same memory in pages of a few layers, shared by every group
        num_blocks = num_pages(kv_groups, num_blocks, info.num_layers)
        executor.allocate_kv_cache(num_blocks, block_size, kv_groups=kv_groups)
        capacity = usable_full_blocks(kv_groups, num_blocks, block_size) * block_size
        windows = sorted({g.window for g in kv_groups if g.window is not None})
        logger.info("hybrid KV cache: %d block tables (%d full attention, the others "
                    "window %s), pages of %d layers' blocks", len(kv_groups),
                    sum(g.window is None for g in kv_groups),
                    "/".join(map(str, windows)), page_slots(kv_groups))
    else:
        executor.allocate_kv_cache(num_blocks, block_size)
        capacity = (num_blocks - 1) * block_size
    max_model_len = _max_model_len(config, info.max_model_len, capacity)
    kv_dtype = info.dtype if config.kv_cache_dtype == "auto" else config.kv_cache_dtype
    logger.info("backend %s; KV cache (%s): %d blocks of %d tokens, %d tokens for one "
                "sequence (%.2f GiB); max_model_len %d", status.spec.name, kv_dtype,
                num_blocks, block_size, capacity, gib, max_model_len)
    tokenizer = HFTokenizer.from_pretrained(config.tokenizer or config.model)
    return LLMEngine(
        executor, tokenizer, info,
        scheduler_config=SchedulerConfig(
            max_num_seqs=max_seqs, max_num_batched_tokens=max_tokens,
            max_model_len=max_model_len, enable_chunked_prefill=config.enable_chunked_prefill),
        cache_config=CacheConfig(num_blocks=num_blocks, block_size=block_size,
                                 enable_prefix_caching=config.enable_prefix_caching,
                                 kv_groups=kv_groups),
        backend_name=status.spec.name,
        structured_outputs=structured_manager(tokenizer, info),
        speculative=_spec_decoder(config, executor_cls, plugins, tokenizer, info,
                                  capacity // block_size + 1, block_size, max_model_len,
                                  max_tokens),
    )


def structured_manager(tokenizer: HFTokenizer, info: ModelInfo) -> StructuredOutputManager:
    """The structured-output manager of an engine over this tokenizer and model. The grammar
    engine reads its own copy of the tokenizer (built on first use, on the compile thread):
    Rust tokenizers are not shared across threads."""
    return StructuredOutputManager(
        functools.partial(LLGuidanceBackend, copy.deepcopy(tokenizer.hf), info.vocab_size),
        info.vocab_size, tokenizer.eos_token_id)


def _spec_decoder(config: EngineConfig, executor_cls: type[Executor], plugins: QuirePlugins,
                  tokenizer: HFTokenizer, info: ModelInfo, num_blocks: int, block_size: int,
                  max_model_len: int, max_num_batched_tokens: int) -> SpecDecoder | None:
    spec = config.speculative_config
    if spec is None:
        return None
    assert not isinstance(spec, (dict, str))  # parsed by EngineConfig
    proposer: Proposer
    if spec.method == "ngram":
        proposer = NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max)
    else:
        assert spec.model is not None
        _check_same_tokenizer(tokenizer, spec.model)
        # The draft model: a second executor of the same backend, its cache as many blocks
        # as the target's (smaller per block, as the model is smaller).
        # (unsplit, in this process: a small model gains nothing from tensor parallelism)
        draft = _new_executor(executor_cls, dataclasses.replace(config, tensor_parallel_size=1),
                              plugins)
        draft_info = draft.load_model(spec.model, config.dtype)
        draft.allocate_kv_cache(num_blocks, block_size)
        logger.info("draft model %s (%s, %d layers), KV cache %.2f GiB", spec.model,
                    draft_info.architecture, draft_info.num_layers,
                    num_blocks * draft.kv_cache_bytes_per_block(block_size) / (1 << 30))
        proposer = DraftModelProposer(
            draft, num_blocks, block_size, min(max_model_len, draft_info.max_model_len),
            max_num_batched_tokens, info.vocab_size)
    logger.info("speculative decoding: %s, %d draft tokens per step%s", spec.method,
                spec.num_speculative_tokens, " (adaptive)" if spec.adaptive else "")
    return SpecDecoder(spec, proposer, max_model_len)


def _new_executor(executor_cls: type[Executor], config: EngineConfig,
                  plugins: QuirePlugins) -> Executor:
    methods = plugins.quantization_methods()
    # (executors written before plugin API 1.2 take two arguments)
    args = (config, plugins.models(), methods) if methods else (config, plugins.models())
    if config.tensor_parallel_size > 1:
        return executor_cls.tensor_parallel(config, args)
    return executor_cls(*args)


def _check_same_tokenizer(tokenizer: HFTokenizer, draft_model: str) -> None:
    """The draft model's tokenizer (when its folder or file has one) must encode like the
    target's: drafts are token ids."""
    try:
        draft_tok = HFTokenizer.from_pretrained(draft_model)
    except ValueError:  # no tokenizer there: nothing to compare
        logger.warning("could not load a tokenizer from draft model %s to compare; assuming "
                       "it shares the target's", draft_model)
        return
    probe = "The quick brown fox jumps over the lazy dog. 0123456789 {\"key\": [1, 2]}"
    if draft_tok.encode(probe) != tokenizer.encode(probe):
        raise ValueError(f"the draft model {draft_model} does not share the target model's "
                         "tokenizer (they encode the same text differently); speculative "
                         "decoding needs a draft model from the same family")


def _ensure_logging(plugin_loggers: list[str]) -> None:
    """Show quire's start-up report (INFO), and what plugins log, when the application
    configured no logging of its own."""
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ["quire", *plugin_loggers]:
        target = logging.getLogger(name)
        if target.handlers:
            continue
        target.addHandler(handler)
        if target.level == logging.NOTSET:
            target.setLevel(logging.INFO)


def _max_model_len(config: EngineConfig, model_limit: int, capacity: int) -> int:
    if config.max_model_len is not None:
        if config.max_model_len > capacity:
            raise ValueError(
                f"max_model_len {config.max_model_len} does not fit the KV cache "
                f"({capacity} tokens); raise kv_cache_memory_bytes/num_blocks or lower "
                "max_model_len")
        return config.max_model_len
    if model_limit > capacity:
        logger.warning("max_model_len lowered from the model's %d to the KV cache's %d tokens",
                       model_limit, capacity)
    return min(model_limit, capacity)
