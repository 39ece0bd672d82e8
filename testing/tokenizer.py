"""The word-level tokenizer that the tiny models and the reference models share, built in memory."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerFast

__all__ = ["BASE_SPECIALS", "BOS_ID", "EOS_ID", "PAD_ID", "word_level_tokenizer"]

#: The special tokens every word-level vocabulary begins with, so that their ids are the same everywhere.
BASE_SPECIALS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # the ids of <pad>, <s> and </s>


def word_level_tokenizer(specials: Sequence[str], words: Sequence[str], named_tokens: dict[str, str], *,
                         spaced_decoding: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: `specials` (starting with ``<pad> <s> </s> <unk>``) take ids 0.., then `words`.

    Text is split on whitespace and punctuation; `named_tokens` become the tokenizer's named multimodal tokens
    (``tokenizer.image_token`` and so on). With `spaced_decoding`, decoding joins words with single spaces. Padding is
    on the left, for batched generation; no BOS is added.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate((*specials, *words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if spaced_decoding:
        backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    backend.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=dict(named_tokens),
        padding_side="left",
        model_max_length=512,
    )
