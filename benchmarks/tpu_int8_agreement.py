"""Accuracy of the tpu backend's --quantization int8 (backends/tpu/int8.py), weight-only and
with int8 activations (QUIRE_TPU_INT8_ACTIVATIONS=1, the MXU's int8 x int8 mode): teacher-
forced top-1 agreement with the model whose projections hold the dequantized int8 weights,
over 256 greedy tokens of that reference, on a random Llama (JAX on the CPU here).

    PYTHONPATH=. python benchmarks/tpu_int8_agreement.py --hidden-size 256

Prints each mode's agreement and the reference's top-2 log-probability gaps at the steps
where it disagrees (how close a call those steps were).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from quire import LLM, SamplingParams
from quire.testing import tiny_models
from tests.tpu.test_int8 import _dequantized_copy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=256)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    src = tiny_models.build_model(f"{tmp}/model", "llama", hidden_size=args.hidden_size,
                                  intermediate_size=2 * args.hidden_size)
    ref_dir = _dequantized_copy(src, f"{tmp}/dequantized")
    kw = dict(backend="tpu", dtype="float32", num_blocks=256, max_num_batched_tokens=1024)
    prompt = [5, 9, 14, 3, 22, 7, 7, 30]
    ref = LLM(ref_dir, **kw)
    tokens = ref.generate([{"prompt_token_ids": prompt}],
                          SamplingParams(temperature=0, max_tokens=args.steps, ignore_eos=True),
                          use_tqdm=False)[0].outputs[0].token_ids
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, logprobs=2)
    prefixes = [{"prompt_token_ids": prompt + tokens[:i]} for i in range(args.steps)]
    gaps = []
    for out in ref.generate(prefixes, one, use_tqdm=False):
        top = sorted((lp.logprob for lp in out.outputs[0].logprobs[0].values()), reverse=True)
        gaps.append(top[0] - top[1])
    for mode in ("0", "1"):
        os.environ["QUIRE_TPU_INT8_ACTIVATIONS"] = mode
        outs = LLM(src, quantization="int8", **kw).generate(prefixes, one, use_tqdm=False)
        agree = np.array([o.outputs[0].token_ids[0] == t for o, t in zip(outs, tokens)])
        label = "int8 activations" if mode == "1" else "weight-only"
        print(f"{label}: agreement {agree.mean():.4f} over {args.steps} steps; reference's "
              f"top-2 gaps where it differs: {np.round(np.sort(np.array(gaps)[~agree]), 3)}")


if __name__ == "__main__":
    main()
