"""Host-side planning of query blocks, with exact values."""

from __future__ import annotations

import numpy as np

from quire.backends.tpu.metadata import build_metadata


def test_query_blocks_never_straddle_requests():
    # Three requests: 3 prefill tokens, 1 decode token, 5 chunked-prefill tokens; two
    # padding tokens and one padding request (a bucket of 11 tokens, 4 requests).
    qsl = np.array([0, 3, 4, 9, 9], np.int32)
    seq_lens = np.array([3, 20, 12, 0], np.int32)
    tables = np.arange(16, dtype=np.int32).reshape(4, 4)
    md = build_metadata(qsl, seq_lens, tables, np.zeros(11, np.int64), query_block=4)
    num_blocks = 11 // 4 + 4
    assert md.block_seq.tolist() == [0, 1, 2, 2] + [0] * (num_blocks - 4)
    assert md.block_num_queries.tolist() == [3, 1, 4, 1] + [0] * (num_blocks - 4)
    assert md.block_first_pos.tolist() == [0, 19, 7, 11] + [0] * (num_blocks - 4)
    rows = md.row_token.reshape(num_blocks, 4)
    assert rows[:4].tolist() == [[0, 1, 2, 0], [3, 0, 0, 0], [4, 5, 6, 7], [8, 0, 0, 0]]
    assert md.token_row[:9].tolist() == [0, 1, 2, 4, 8, 9, 10, 11, 12]
    assert md.row_token[md.token_row[:9]].tolist() == list(range(9))
