"""Prefix-cache block hashes: hash(parent hash, the block's token ids, extra keys)."""

from __future__ import annotations

from collections.abc import Sequence

BlockHash = int


def hash_block_tokens(
    parent: BlockHash | None, token_ids: Sequence[int], extra_keys: tuple = ()
) -> BlockHash:
    """Chain hash of one full block. Equal prefixes (and equal extra keys, such as a cache
    salt) give equal hashes, so the hash of block i identifies the whole prefix up to it."""
    return hash((parent, tuple(token_ids), extra_keys))
