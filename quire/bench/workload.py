"""Seeded synthetic workloads (token-id prompts, fixed output lengths)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_requests(self) -> int:
        return len(self.prompts)

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)


def sharegpt_like(num_requests: int, vocab_size: int, min_len: int = 32, max_len: int = 256,
                  seed: int = 0) -> Workload:
    """Prompt and output lengths log-uniform in [min_len, max_len]: many short requests and a
    long tail, like ShareGPT conversations."""
    rng = np.random.default_rng(seed)
    lens = np.exp(rng.uniform(np.log(min_len), np.log(max_len + 1), size=(2, num_requests)))
    lens = np.clip(lens.astype(int), min_len, max_len)
    prompts = [rng.integers(10, vocab_size, size=n).tolist() for n in lens[0]]
    return Workload(f"sharegpt-like {num_requests}x[{min_len},{max_len}]", prompts,
                    lens[1].tolist())


def fixed(num_requests: int, vocab_size: int, prompt_len: int, output_len: int,
          seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(10, vocab_size, size=prompt_len).tolist()
               for _ in range(num_requests)]
    return Workload(f"fixed {num_requests}x({prompt_len}+{output_len})", prompts,
                    [output_len] * num_requests)


def shared_prefix(num_requests: int, vocab_size: int, num_prefixes: int = 4,
                  prefix_len: int = 512, suffix_len: int = 32, output_len: int = 16,
                  seed: int = 0) -> Workload:
    """Few-shot style: each prompt is one of num_prefixes long shared prefixes plus its own
    short question."""
    rng = np.random.default_rng(seed)
    prefixes = [rng.integers(10, vocab_size, size=prefix_len).tolist()
                for _ in range(num_prefixes)]
    prompts = [prefixes[i % num_prefixes] + rng.integers(10, vocab_size, size=suffix_len).tolist()
               for i in range(num_requests)]
    return Workload(f"shared-prefix {num_requests}x({num_prefixes} prefixes of {prefix_len}"
                    f"+{suffix_len}, out {output_len})", prompts, [output_len] * num_requests)
