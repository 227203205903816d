"""Sampling on device, in one jitted call per step: greedy, temperature, top-k, top-p,
min-p, penalties, banned tokens, seeds and logprobs, with the torch sampler's semantics.

Rows: S sampled requests padded to a request bucket (padding rows are greedy); V
vocabulary. Seeded rows draw their noise from a key made of (seed, output step), so a
seeded request gives the same tokens whatever else is batched with it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from quire.core.batch import SamplingBatch

_MASK = -jnp.inf


@functools.partial(jax.jit, static_argnames=("all_greedy", "filter_top", "num_logprobs"))
def sample(logits: jax.Array, rows: dict[str, jax.Array], key: jax.Array, *,
           all_greedy: bool, filter_top: bool, num_logprobs: int
           ) -> tuple[jax.Array, jax.Array | None, jax.Array | None, jax.Array | None]:
    """logits [S, V] fp32; rows: host_rows()'s arrays; num_logprobs 0: none.
    -> (token ids [S], sampled logprobs [S], top ids [S, k], top logprobs [S, k])."""
    raw_logprobs = jax.nn.log_softmax(logits, axis=-1) if num_logprobs else None
    if "token_bitmask" in rows:  # structured outputs: [S, cdiv(V, 32)] packed allowed bits
        bits = (rows["token_bitmask"][:, :, None] >> jnp.arange(32, dtype=jnp.int32)) & 1
        allowed = bits.reshape(logits.shape[0], -1)[:, : logits.shape[1]].astype(bool)
        logits = jnp.where(allowed, logits, _MASK)
    logits = _apply_penalties(logits, rows)
    vocab = logits.shape[1]
    banned = jnp.zeros((logits.shape[0], vocab + 1), bool)
    banned = banned.at[rows["ban_rows"], rows["ban_ids"]].set(True, mode="drop")[:, :vocab]
    logits = jnp.where(banned, _MASK, logits)
    greedy_ids = jnp.argmax(logits, axis=-1)
    if all_greedy:
        token_ids = greedy_ids
    else:
        temperature = rows["temperature"]
        is_greedy = temperature < 1e-5
        scaled = logits / jnp.where(is_greedy, 1.0, temperature)[:, None]
        if filter_top:
            scaled = _top_k_top_p(scaled, rows["top_k"], rows["top_p"])
        probs = jax.nn.softmax(scaled, axis=-1)
        keep = probs >= rows["min_p"][:, None] * probs.max(axis=-1, keepdims=True)
        probs = jnp.where(keep, probs, 0.0)
        noise = _exponential_noise(key, rows, probs.shape)
        # Gumbel-max in its exponential form: argmax(p / E) samples from p.
        token_ids = jnp.where(is_greedy, greedy_ids, jnp.argmax(probs / noise, axis=-1))
    if not num_logprobs:
        return token_ids, None, None, None
    sampled = jnp.take_along_axis(raw_logprobs, token_ids[:, None], axis=1)[:, 0]
    top_logprobs, top_ids = jax.lax.top_k(raw_logprobs, num_logprobs)
    return token_ids, sampled, top_ids, top_logprobs


def _top_k_top_p(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    vocab = logits.shape[-1]
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    ranks = jnp.arange(vocab)[None, :]
    sorted_logits = jnp.where(ranks >= k[:, None], _MASK, sorted_logits)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better tokens
    drop = (before >= top_p[:, None]) & (ranks > 0)
    sorted_logits = jnp.where(drop, _MASK, sorted_logits)
    return jnp.full_like(logits, _MASK).at[jnp.arange(logits.shape[0])[:, None], order].set(
        sorted_logits)


def _apply_penalties(logits: jax.Array, rows: dict[str, jax.Array]) -> jax.Array:
    """Repetition (prompt + output, CTRL style), then frequency and presence (output only).
    Token id lists are padded with -1; rows without penalties have neutral values."""
    num_rows, vocab = logits.shape
    row_index = jnp.arange(num_rows)[:, None]

    def counts(ids: jax.Array) -> jax.Array:
        idx = jnp.where(ids < 0, vocab, ids)
        return jnp.zeros((num_rows, vocab + 1)).at[row_index, idx].add(1.0)[:, :vocab]

    out_counts = counts(rows["output_token_ids"])
    seen = (counts(rows["prompt_token_ids"]) > 0) | (out_counts > 0)
    rep = rows["repetition_penalty"][:, None]
    logits = jnp.where(seen, jnp.where(logits > 0, logits / rep, logits * rep), logits)
    return (logits - rows["frequency_penalty"][:, None] * out_counts
            - rows["presence_penalty"][:, None] * (out_counts > 0))


def _exponential_noise(key: jax.Array, rows: dict[str, jax.Array],
                       shape: tuple[int, int]) -> jax.Array:
    def row_key(i: jax.Array, seed: jax.Array, step: jax.Array, has_seed: jax.Array):
        seeded = jax.random.fold_in(jax.random.key(seed), step)
        return jax.lax.cond(has_seed, lambda: seeded, lambda: jax.random.fold_in(key, i))

    keys = jax.vmap(row_key)(jnp.arange(shape[0]), rows["seeds"], rows["output_steps"],
                             rows["has_seed"])
    return jax.vmap(lambda k: jax.random.exponential(k, (shape[1],)))(keys)


def host_rows(sb: SamplingBatch, num_rows: int) -> dict[str, np.ndarray]:
    """The SamplingBatch as fixed-shape arrays: num_rows rows (a request bucket), token id
    lists and bans padded to powers of two, so shapes repeat from step to step."""
    n = sb.num_rows

    def col(values: np.ndarray, fill: float, dtype: type) -> np.ndarray:
        out = np.full(num_rows, fill, dtype)
        out[:n] = values
        return out

    def ids(table: np.ndarray | None) -> np.ndarray:
        width = 1 if table is None else _pow2(table.shape[1])
        out = np.full((num_rows, width), -1, np.int32)
        if table is not None:
            out[:n, : table.shape[1]] = table
        return out

    num_bans = _pow2(len(sb.suppress_rows))
    ban_rows, ban_ids = np.zeros(num_bans, np.int32), np.full(num_bans, np.iinfo(np.int32).max,
                                                              np.int32)
    ban_rows[: len(sb.suppress_rows)] = sb.suppress_rows
    ban_ids[: len(sb.suppress_rows)] = sb.suppress_token_ids
    rows = {
        "temperature": col(sb.temperature, 0.0, np.float32),
        "top_k": col(sb.top_k, 0, np.int32),
        "top_p": col(sb.top_p, 1.0, np.float32),
        "min_p": col(sb.min_p, 0.0, np.float32),
        "presence_penalty": col(sb.presence_penalty, 0.0, np.float32),
        "frequency_penalty": col(sb.frequency_penalty, 0.0, np.float32),
        "repetition_penalty": col(sb.repetition_penalty, 1.0, np.float32),
        "seeds": col(sb.seeds & 0x7FFF_FFFF, 0, np.uint32),
        "has_seed": col(sb.has_seed, False, bool),
        "output_steps": col(sb.output_steps, 0, np.int32),
        "prompt_token_ids": ids(sb.prompt_token_ids),
        "output_token_ids": ids(sb.output_token_ids),
        "ban_rows": ban_rows,
        "ban_ids": ban_ids,
    }
    if sb.token_bitmask is not None:  # a second compiled variant, only for such steps
        mask = np.full((num_rows, sb.token_bitmask.shape[1]), -1, np.int32)
        mask[:n] = sb.token_bitmask
        rows["token_bitmask"] = mask
    return rows


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
