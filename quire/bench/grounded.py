"""An input-grounded workload: chat prompts whose answers copy long spans of the prompt
(edit this code, repeat a text with a change), where speculative decoding with prompt
lookup pays. Written here, not downloaded."""

from __future__ import annotations

from quire.bench.workload import Workload

SNIPPETS = [
    '''def moving_average(values, window):
    """Return the moving averages of values over a window of the given size."""
    if window <= 0:
        raise ValueError("window must be positive")
    result = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            result.append(total / window)
    return result''',
    '''class Inventory:
    def __init__(self):
        self.items = {}

    def add(self, name, count):
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name, count):
        if self.items.get(name, 0) < count:
            raise KeyError(f"not enough {name} in stock")
        self.items[name] -= count

    def total(self):
        return sum(self.items.values())''',
    '''def parse_config(path):
    config = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, _, value = line.partition("=")
            config[key.strip()] = value.strip()
    return config''',
    '''The library opens at nine in the morning and closes at six in the evening on weekdays.
On Saturdays it opens at ten and closes at four. It is closed on Sundays and on public
holidays. Members may borrow up to five books at a time for three weeks, and may renew
each loan twice unless another member has reserved the book.''',
]

TASKS = [
    "Rewrite the following code exactly as it is, but rename the function or class to use "
    "a better name. Output only the code.\n\n{text}",
    "Copy the following text exactly, then fix any mistakes you find.\n\n{text}",
    "Repeat the following, word for word:\n\n{text}",
]


def grounded(tokenizer, num_requests: int, output_len: int) -> Workload:
    """num_requests chat prompts (the tokenizer's chat template) cycling over the snippets
    and tasks, each asking for output_len tokens."""
    prompts = []
    for i in range(num_requests):
        task = TASKS[i % len(TASKS)].format(text=SNIPPETS[i % len(SNIPPETS)])
        prompts.append(tokenizer.apply_chat_template([{"role": "user", "content": task}],
                                                     add_generation_prompt=True))
    return Workload(f"grounded {num_requests}x(edit/copy, {output_len} out)", prompts,
                    [output_len] * num_requests)
