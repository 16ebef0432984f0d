import numpy as np
import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from pipeline.data import blocks as blocks_module
from pipeline.data.blocks import pack_blocks, tokenize_text
from pipeline.errors import UserError
from pipeline.tokenization import tokenize_splits


def test_pack_blocks_cuts_contiguous_blocks_and_reports_the_tail():
    tokens = np.arange(23, dtype=np.int32)
    blocks, dropped = pack_blocks(tokens, block_size=5)
    assert blocks.shape == (4, 5)
    assert dropped == 3
    assert np.array_equal(blocks.ravel(), tokens[:20])  # contiguous: no token skipped or repeated


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_splits_become_exact_blocks_with_no_padding_and_eval_splits_keep_their_whole_stream(
    tokenizer, offline_corpus, monkeypatch
):
    """Expected tokens from the tokenizer itself, one row at a time: not through the batching code under test."""
    monkeypatch.setattr(blocks_module, "TOKENIZER_BATCH_ROWS", 7)  # batch boundaries inside the split
    lines = offline_corpus["validation"].read_text().splitlines(keepends=True)
    texts = {split: Dataset.from_dict({"text": lines}) for split in ("train", "validation")}
    blocks, streams, stats = tokenize_splits(texts, tokenizer, block_size=32)
    stream = np.array([token for line in lines for token in tokenizer.encode(line)])
    expected_blocks, expected_dropped = divmod(len(stream), 32)
    assert stats["validation"] == {
        "tokens": len(stream),
        "blocks": expected_blocks,
        "dropped_tail_tokens": expected_dropped,
    }
    packed = np.array(blocks["validation"]["input_ids"])
    assert packed.shape == (expected_blocks, 32)
    assert np.array_equal(packed.ravel(), stream[: expected_blocks * 32])
    assert expected_dropped > 0  # the block tail evaluate must not lose
    assert set(streams) == {"validation"}  # train is never scored
    assert np.array_equal(np.array(streams["validation"]["input_ids"]), stream)
    # No pad token anywhere: the tokenizer has none, and eos (the usual stand-in) never appears in plain text.
    assert tokenizer.pad_token is None
    assert tokenizer.eos_token_id not in set(packed.ravel().tolist())


def test_tokens_of_separate_rows_join_in_order(tokenizer):
    rows = [" = Title = \n", "", " Some text here .\n"]
    stream = tokenize_text(rows, tokenizer)
    expected = [token for row in rows for token in tokenizer.encode(row)]
    assert stream.tolist() == expected and len(stream) > 0


def test_a_split_shorter_than_one_block_is_refused(tokenizer):
    with pytest.raises(
        UserError, match=r"split 'test' has \d+ tokens, fewer than one block of tokenize\.block_size=64"
    ):
        tokenize_splits({"test": Dataset.from_dict({"text": [" tiny .\n"]})}, tokenizer, block_size=64)
