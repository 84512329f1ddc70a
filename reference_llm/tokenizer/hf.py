"""The fast path: train and encode byte-level BPE with Hugging Face `tokenizers` (Rust).

Training uses the same conventions as `BPETokenizer.train` (GPT-2 regex, all 256 bytes in the
alphabet, special tokens first and cut out of the training text), and the result is kept in the same
plain form and saved through the same writer. So a file saved here loads into `BPETokenizer` with
identical ids, and both classes give a tokenizer the same fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

import numpy as np

from reference_llm.errors import TokenizerError
from reference_llm.tokenizer.base import EOT, SpecialSplitter, batch_texts
from reference_llm.tokenizer.bpe import ID_DTYPE, BPETokenizer, check_training_args
from reference_llm.tokenizer.bytelevel import fix_surrogates


def _tokenizers() -> ModuleType:
    try:
        import tokenizers
    except ImportError:
        raise TokenizerError("kind 'hf-bpe' needs the `tokenizers` package: pip install tokenizers") from None
    return tokenizers


class HFBPETokenizer(BPETokenizer):
    """A `BPETokenizer` whose training and encoding run in HF `tokenizers`; decoding is shared."""

    kind = "hf-bpe"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fast = _tokenizers().Tokenizer.from_str(self.to_bytes().decode("utf-8"))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, special_tokens: Iterable[str] = (EOT,)) -> HFBPETokenizer:
        specials, texts = check_training_args(texts, vocab_size, special_tokens)
        tk = _tokenizers()
        model = tk.Tokenizer(tk.models.BPE())
        model.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        model.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=0,
            special_tokens=list(specials),
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        # HF's trainer would count (and merge inside) special-token strings found in the text;
        # feeding it only the text between them matches `BPETokenizer.train`.
        splitter = SpecialSplitter({s: i for i, s in enumerate(specials)})
        fed = 0

        def segments() -> Iterator[str]:
            nonlocal fed
            for text in texts:
                for segment in splitter.plain_segments(fix_surrogates(text)):
                    fed += 1
                    yield segment

        model.train_from_iterator(segments(), trainer)
        if not fed:
            raise TokenizerError("texts: the training text has nothing but special tokens")
        return cls.from_dict(json.loads(model.to_str()), "<trained by tokenizers>")

    def encode(self, text: str) -> list[int]:
        return self._fast.encode_batch_fast([fix_surrogates(text)], add_special_tokens=False)[0].ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """Runs on all cores (HF's thread pool) unless TOKENIZERS_PARALLELISM=false."""
        batch = [fix_surrogates(text) for text in batch_texts(texts)]
        return [e.ids for e in self._fast.encode_batch_fast(batch, add_special_tokens=False)]

    # The array forms go through HF's encoder too, not the inherited Python one.
    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=ID_DTYPE)

    def encode_arrays(self, texts: Iterable[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=ID_DTYPE) for ids in self.encode_batch(texts)]
