from __future__ import annotations

import json
import os

import pytest

from quire import LLM, SamplingParams
from quire.cli import main as cli_main

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, dtype="float32", block_size=8, num_blocks=128)


def test_strings_and_token_ids_agree(llm):
    tok = llm.get_tokenizer()
    a, b = llm.generate(["Hello world", tok.encode("Hello world")], GREEDY, use_tqdm=False)
    assert a.outputs[0].token_ids == b.outputs[0].token_ids and len(a.outputs[0].token_ids) == 8
    assert a.prompt == "Hello world" and b.prompt is None
    assert a.outputs[0].text == tok.decode(a.outputs[0].token_ids)


def test_single_token_id_prompt_and_order(llm):
    outs = llm.generate([[5, 6, 7], "a", [9]], GREEDY, use_tqdm=False)
    assert [o.prompt_token_ids for o in outs][::2] == [[5, 6, 7], [9]]
    (one,) = llm.generate([5, 6, 7], GREEDY, use_tqdm=False)
    assert one.outputs[0].token_ids == outs[0].outputs[0].token_ids


def test_unknown_argument_is_type_error(llama_dir):
    with pytest.raises(TypeError, match="block_sise"):
        LLM(llama_dir, block_sise=16)


def test_params_list_length_checked(llm):
    with pytest.raises(ValueError, match="2 sampling params for 1 prompts"):
        llm.generate(["a"], [GREEDY, GREEDY], use_tqdm=False)


def test_chat_uses_template(llm):
    (out,) = llm.chat([{"role": "user", "content": "Hello"}], GREEDY, use_tqdm=False)
    expected = llm.get_tokenizer().encode("<|user|>Hello</s><|assistant|>")
    assert out.prompt_token_ids == expected


def test_seeded_sampling_independent_of_batch(llm):
    p = SamplingParams(temperature=1.0, seed=42, max_tokens=10, ignore_eos=True)
    (alone,) = llm.generate(["the cache"], p, use_tqdm=False)
    crowd = llm.generate(["one two", "the cache", "paris"],
                         [SamplingParams(temperature=1.0, max_tokens=10), p,
                          SamplingParams(temperature=0.7, max_tokens=5)], use_tqdm=False)
    assert crowd[1].outputs[0].token_ids == alone.outputs[0].token_ids


def test_n_completions(llm):
    (out,) = llm.generate(["the scheduler serves paged attention"],
                          SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=6),
                          use_tqdm=False)
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    assert llm.engine.stats().num_used_blocks == 0


def test_stop_string_and_logprobs(llm):
    (free,) = llm.generate(["Hello world"], SamplingParams(temperature=0, max_tokens=12,
                                                           ignore_eos=True), use_tqdm=False)
    text = free.outputs[0].text
    stop = text[3:6]
    (out,) = llm.generate(["Hello world"], SamplingParams(temperature=0, max_tokens=12,
                                                          stop=[stop], logprobs=3,
                                                          ignore_eos=True), use_tqdm=False)
    c = out.outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == stop
    assert c.text == text[: text.index(stop)]
    assert len(c.logprobs) == len(c.token_ids)
    for tid, entry in zip(c.token_ids, c.logprobs):
        assert tid in entry and entry[tid].rank == 1  # greedy picks the top token
        assert len(entry) == 3
        assert entry[tid].logprob == max(lp.logprob for lp in entry.values()) <= 0


def test_too_long_prompt_is_an_error_output(llama_dir):
    small = LLM(llama_dir, dtype="float32", max_model_len=16, num_blocks=8, block_size=4)
    long_out, ok = small.generate(["one " * 40, "one"], GREEDY, use_tqdm=False)
    assert long_out.outputs[0].finish_reason == "error" and "max_model_len" in long_out.error
    assert len(ok.outputs[0].token_ids) == 8


def test_max_model_len_must_fit_cache(llama_dir):
    with pytest.raises(ValueError, match="does not fit the KV cache"):
        LLM(llama_dir, max_model_len=512, num_blocks=4, block_size=4)


def test_progress_bar(llm, capsys):
    llm.generate(["a", "b"], GREEDY, use_tqdm=True)
    assert "Generating" in capsys.readouterr().err


def test_sharded_checkpoint_loads_the_same(llama_dir, tmp_path, llm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    AutoTokenizer.from_pretrained(llama_dir).save_pretrained(tmp_path)
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    sharded = LLM(str(tmp_path), dtype="float32", block_size=8, num_blocks=64)
    a = sharded.generate(["Hello world"], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    b = llm.generate(["Hello world"], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    assert a == b


def test_unsupported_architecture(llama_dir, copy_model):
    path = copy_model(llama_dir)
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["architectures"] = ["GPT2LMHeadModel"]
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="not supported; supported: Gemma2ForCausalLM"):
        LLM(path)


def test_missing_weights_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        LLM(str(tmp_path))


def test_cli_generate(llama_dir, capsys):
    rc = cli_main(["generate", "--model", llama_dir, "--dtype", "float32", "--num-blocks", "64",
                   "--prompt", "Hello world", "--prompt", "one", "--max-tokens", "5"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("###") == 2 and "finish: length" in out


def test_cli_generate_stream_and_errors(llama_dir, capsys):
    rc = cli_main(["generate", "--model", llama_dir, "--num-blocks", "64", "--stream",
                   "--prompt", "Hello", "--max-tokens", "4"])
    assert rc == 0 and "(finish: length)" in capsys.readouterr().out
    assert cli_main(["generate", "--model", llama_dir]) == 2
    assert "no prompts" in capsys.readouterr().err


def test_kv_cache_sized_from_memory_budget(llama_dir, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="quire")
    # K and V x 2 layers x 16 tokens x 2 KV heads x head size 16 x 4 bytes = 8192 a block
    llm = LLM(llama_dir, dtype="float32", block_size=16, kv_cache_memory_bytes=1 << 20)
    assert llm.engine.executor.kv_cache_bytes_per_block(16) == 8192
    assert llm.engine.kv_cache.pool.num_blocks == 128
    assert "KV cache (float32): 128 blocks of 16 tokens, 2032 tokens for one sequence" \
        in caplog.text


def test_vllm_prompt_dicts(llm):
    """vLLM's TextPrompt / TokensPrompt dicts run unchanged, mixed with plain forms."""
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    ids = llm.get_tokenizer().encode("the scheduler")
    plain = llm.generate(["the scheduler", ids], params, use_tqdm=False)
    dicts = llm.generate([{"prompt": "the scheduler"}, {"prompt_token_ids": ids}], params,
                         use_tqdm=False)
    assert [o.outputs[0].token_ids for o in dicts] == [o.outputs[0].token_ids for o in plain]
    one = llm.generate({"prompt_token_ids": ids, "cache_salt": "tenant-a"}, params,
                       use_tqdm=False)
    assert one[0].outputs[0].token_ids == plain[1].outputs[0].token_ids
    with pytest.raises(ValueError, match="exactly one of"):
        llm.generate({"prompt": "a", "prompt_token_ids": [1]}, params)
    with pytest.raises(ValueError, match="multi_modal_data"):
        llm.generate({"prompt": "a", "multi_modal_data": {}}, params)
