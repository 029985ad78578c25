"""The text tokenizer: a byte-level BPE trained here, or any local HF tokenizer directory.

Byte-level BPE (after GPT-2) has the 256 bytes in its base alphabet, so any
unicode string -- unseen characters, other scripts, emoji -- encodes without an
[UNK]; a small vocabulary (512) is enough for the shapes world's captions. The
result is a `transformers` fast tokenizer, so it saves with `save_pretrained`
and loads with `AutoTokenizer` like any other.

Only local directories are loaded: nothing is downloaded (`local_files_only`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ar_model.errors import CheckpointError, ConfigError

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")  # ids 0..3 of a tokenizer trained here
_BYTE_ALPHABET = 256


def train_text_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 1,
                         phrases: Sequence[str] = ()) -> Any:
    """Train a lowercasing byte-level BPE on `texts`; returns a `transformers.PreTrainedTokenizerFast`.

    `vocab_size` is an upper bound: a small corpus may yield fewer merges, so size
    the model's text vocabulary with `len(tokenizer)`, never with this argument.

    `phrases`: multi-word names that become one token each wherever they stand as whole words,
    in any case ("upper center left": three BPE words for one cell of a 4x4 world). They are the
    library's added tokens (matched longest first, before BPE; ids after the BPE vocabulary), so
    `len(tokenizer)` grows by their number; a decoder step puts back the space before each, so
    decode(encode(s)) still gives the normalised s (with one leading space where s opens with a phrase).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    minimum = _BYTE_ALPHABET + len(SPECIAL_TOKENS)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ConfigError(
            f"vocab_size must be an integer >= {minimum} (256 bytes + {len(SPECIAL_TOKENS)} special tokens), "
            f"got {vocab_size!r}"
        )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ConfigError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
    if isinstance(phrases, str) or any(not isinstance(p, str) or len(p.split()) < 2 or p != " ".join(p.split())
                                       for p in phrases):
        raise ConfigError(f"phrases must be a list of names of two or more words, single-spaced, got {phrases!r}")

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))  # [UNK] is never produced: every byte is in the alphabet
    # NFKC folds compatibility forms (full-width letters, ligatures) before lowercasing;
    # captions are case-insensitive for a generator, so "A Red" and "a red" share ids.
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Spelling: a string the image must show ('the word "taxi"', 'the number 427') is split into single characters
    # before BPE, so that no merge hides its letters and a string never seen whole still encodes letter by
    # letter (a merged "ta" would leave a model to learn what it spells). Captions without quotes or digits
    # tokenize as before. The regex runs after lowercasing: alphanumerics followed, within the word, by a quote;
    # every digit anywhere.
    spell = pre_tokenizers.Split(Regex(r'[0-9a-z](?=[0-9a-z]*")|[0-9]'), behavior="isolated")
    tok.pre_tokenizer = pre_tokenizers.Sequence([spell, pre_tokenizers.ByteLevel(add_prefix_space=False)])  # GPT-2 bytes
    tok.decoder = decoders.ByteLevel()  # and back, so decode(encode(s)) == normalised s
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes even if the corpus lacks them
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts), trainer=trainer)
    if phrases:
        # lstrip: the token takes the space before it (else a lone "Ġ" token would precede every phrase);
        # single_word: "center left" does not match inside "center leftmost"; normalized: matched after
        # lowercasing. Decoding: an added token is decoded as its content, so the space it took is put back
        # before every token with a space inside (no BPE token has one: ByteLevel writes spaces as "Ġ").
        tok.add_tokens([AddedToken(p.lower(), single_word=True, lstrip=True, normalized=True)
                        for p in dict.fromkeys(phrases)])
        tok.decoder = decoders.Sequence([decoders.Replace(Regex(r"^(?=\S+ )"), " "), decoders.ByteLevel()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        unk_token="[UNK]",
        clean_up_tokenization_spaces=False,  # keep " ," etc. exactly as encoded
    )


def load_text_tokenizer(path: str | os.PathLike) -> Any:
    """Load a tokenizer from a LOCAL directory: one saved by `save_pretrained` here, or any HF tokenizer dir.

    Raises CheckpointError naming the path when it is missing or holds no loadable tokenizer.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise CheckpointError(f"text tokenizer directory {str(path)!r} {what}")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises OSError / ValueError / KeyError depending on what is missing
        raise CheckpointError(
            f"no text tokenizer could be loaded from {str(path)!r} (expected tokenizer.json / "
            f"tokenizer_config.json as written by save_pretrained): {type(e).__name__}: {e}"
        ) from e


__all__ = ["SPECIAL_TOKENS", "load_text_tokenizer", "train_text_tokenizer"]
