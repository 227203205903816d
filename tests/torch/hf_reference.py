"""Greedy reference outputs from HF transformers, with the top-2 logit gap of each step."""

from __future__ import annotations

import torch

# A step whose top-2 logits are closer than this may legitimately flip between two correct
# implementations; comparison stops there.
NEAR_TIE = 1e-3


def hf_greedy(model_dir: str, prompts: list[list[int]], max_new_tokens: int,
              dtype=torch.float32) -> list[tuple[list[int], list[float]]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    results = []
    for ids in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                                 do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, eos_token_id=None,
                                 pad_token_id=0)
        tokens = out.sequences[0, len(ids):].tolist()
        gaps = []
        for s in out.scores:
            top2 = s[0].float().topk(2).values
            gaps.append(float(top2[0] - top2[1]))
        results.append((tokens, gaps))
    return results


def assert_greedy_match(ours: list[int], ref: list[int], gaps: list[float]) -> int:
    """Equal up to the first near tie in the reference; returns how many were compared."""
    n = len(ref)
    for i, gap in enumerate(gaps):
        if gap < NEAR_TIE:
            n = i
            break
    assert ours[:n] == ref[:n], f"diverged before any near tie: ours {ours} ref {ref}"
    return n
