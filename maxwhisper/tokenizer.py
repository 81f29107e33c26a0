"""Whisper's tokenizer on tiktoken, offline, with every special token.

The byte-pair ranks are the `gpt2.tiktoken` (English-only models) and `multilingual.tiktoken`
files that openai-whisper bundles (MIT licence), shipped in `maxwhisper/assets/`. Special tokens
follow the ranks in Whisper's order: end of text, start of transcript, one token per language,
translate, transcribe, start of LM, start of previous text, no speech, no timestamps, then 1501
timestamp tokens <|0.00|> ... <|30.00|> in 20 ms steps. Ids equal openai-whisper's (tested).
"""

from __future__ import annotations

import base64
import string
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import tiktoken

ASSETS = Path(__file__).parent / "assets"
NUM_LANGUAGES = 99  # languages known to the released models' vocabulary
SPLIT_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

# ISO code -> name, in the order of the language tokens
LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu",
    "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani",
    "sl": "slovenian", "kn": "kannada", "et": "estonian", "mk": "macedonian", "br": "breton",
    "eu": "basque", "is": "icelandic", "hy": "armenian", "ne": "nepali", "mn": "mongolian",
    "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili", "gl": "galician",
    "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer", "sn": "shona",
    "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan", "ka": "georgian",
    "be": "belarusian", "tg": "tajik", "sd": "sindhi", "gu": "gujarati", "am": "amharic",
    "yi": "yiddish", "lo": "lao", "uz": "uzbek", "fo": "faroese", "ht": "haitian creole",
    "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese", "sa": "sanskrit",
    "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog", "mg": "malagasy",
    "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala", "ha": "hausa",
    "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}


@lru_cache(maxsize=4)
def get_encoding(name: str = "gpt2", num_languages: int = NUM_LANGUAGES) -> tiktoken.Encoding:
    """The tiktoken encoding `name` ('gpt2' or 'multilingual') with Whisper's special tokens."""
    ranks = {}
    for line in (ASSETS / f"{name}.tiktoken").read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in list(LANGUAGES)[:num_languages]],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *[f"<|{i * 0.02:.2f}|>" for i in range(1501)],
    ]
    n_ranks = len(ranks)
    special_ids = {token: n_ranks + i for i, token in enumerate(specials)}
    return tiktoken.Encoding(name=f"{name}-{num_languages}", pat_str=SPLIT_PATTERN,
                             mergeable_ranks=ranks, special_tokens=special_ids)


@dataclass(frozen=True)
class Tokenizer:
    """Text <-> ids, plus the special tokens and start-of-transcript sequence Whisper decodes with."""

    encoding: tiktoken.Encoding
    num_languages: int
    language: str | None = None
    task: str | None = None
    special: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "special", {t: self.encoding.encode_single_token(t)
                                             for t in self.encoding.special_tokens_set})

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text)

    def decode(self, ids) -> str:
        """Text of `ids`, leaving out timestamp tokens."""
        return self.encoding.decode([int(t) for t in ids if int(t) < self.timestamp_begin])

    def decode_with_timestamps(self, ids) -> str:
        """Text of `ids` with timestamps shown as <|1.08|>."""
        return self.encoding.decode([int(t) for t in ids])

    @property
    def eot(self) -> int:
        return self.encoding.eot_token

    @property
    def sot(self) -> int:
        return self.special["<|startoftranscript|>"]

    @property
    def transcribe(self) -> int:
        return self.special["<|transcribe|>"]

    @property
    def translate(self) -> int:
        return self.special["<|translate|>"]

    @property
    def sot_lm(self) -> int:
        return self.special["<|startoflm|>"]

    @property
    def sot_prev(self) -> int:
        return self.special["<|startofprev|>"]

    @property
    def no_speech(self) -> int:
        return self.special["<|nospeech|>"]

    @property
    def no_timestamps(self) -> int:
        return self.special["<|notimestamps|>"]

    @property
    def timestamp_begin(self) -> int:
        return self.special["<|0.00|>"]

    @property
    def language_token(self) -> int:
        if self.language is None:
            raise ValueError("this tokenizer has no language set")
        return self.to_language_token(self.language)

    def to_language_token(self, language: str) -> int:
        token = self.special.get(f"<|{language}|>")
        if token is None:
            raise KeyError(f"language {language!r} is not in this vocabulary")
        return token

    @cached_property
    def all_language_tokens(self) -> tuple[int, ...]:
        return tuple(self.special[f"<|{c}|>"] for c in list(LANGUAGES)[: self.num_languages])

    @cached_property
    def all_language_codes(self) -> tuple[str, ...]:
        return tuple(list(LANGUAGES)[: self.num_languages])

    @cached_property
    def sot_sequence(self) -> tuple[int, ...]:
        sequence = [self.sot]
        if self.language is not None:
            sequence.append(self.language_token)
        if self.task is not None:
            sequence.append(self.transcribe if self.task == "transcribe" else self.translate)
        return tuple(sequence)

    @property
    def sot_sequence_including_notimestamps(self) -> tuple[int, ...]:
        return self.sot_sequence + (self.no_timestamps,)

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens of symbols that are not speech (suppressed by Whisper's "-1" setting).

        Speaker tags and music marks such as ♪ are kept out of transcripts; a symbol counts when
        it is a single token, alone or after a space (musical signs count whenever they start).
        """
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        music = set("♩♪♫♬♭♮♯")
        found = {self.encoding.encode(" -")[0], self.encoding.encode(" '")[0]}
        for symbol in symbols + sorted(music):
            for ids in (self.encoding.encode(symbol), self.encoding.encode(" " + symbol)):
                if len(ids) == 1 or symbol in music:
                    found.add(ids[0])
        return tuple(sorted(found))

    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Words and their tokens: at spaces and punctuation, or at every whole character
        for languages written without spaces (as openai-whisper splits them)."""
        if self.language in {"zh", "ja", "th", "lo", "my", "yue"}:
            return self.split_tokens_on_unicode(tokens)
        return self.split_tokens_on_spaces(tokens)

    def split_tokens_on_unicode(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Pieces that decode to whole characters (a token may hold part of one)."""
        decoded_full = self.decode_with_timestamps(tokens)
        replacement = "\ufffd"
        words, word_tokens, current, offset = [], [], [], 0
        for token in tokens:
            current.append(token)
            decoded = self.decode_with_timestamps(current)
            if (replacement not in decoded
                    or decoded_full[offset + decoded.index(replacement)] == replacement):
                words.append(decoded)
                word_tokens.append(current)
                current = []
                offset += len(decoded)
        return words, word_tokens

    def split_tokens_on_spaces(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Whole characters joined into words: a new word at a space, a punctuation mark or a
        special token."""
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for subword, subword_tokens in zip(*self.split_tokens_on_unicode(tokens), strict=True):
            special = subword_tokens[0] >= self.eot
            if special or subword.startswith(" ") or subword.strip() in string.punctuation \
                    or not words:
                words.append(subword)
                word_tokens.append(subword_tokens)
            else:
                words[-1] += subword
                word_tokens[-1].extend(subword_tokens)
        return words, word_tokens


def get_tokenizer(multilingual: bool, *, num_languages: int = NUM_LANGUAGES,
                  language: str | None = None, task: str | None = None) -> Tokenizer:
    """openai-whisper's `get_tokenizer`: English-only models get no language or task tokens."""
    if language is not None:
        language = language.lower()
        if language not in LANGUAGES:
            by_name = {name: code for code, name in LANGUAGES.items()}
            if language not in by_name:
                raise ValueError(f"unsupported language: {language}")
            language = by_name[language]
    if multilingual:
        return _tokenizer("multilingual", num_languages, language or "en", task or "transcribe")
    return _tokenizer("gpt2", num_languages, None, None)


@lru_cache(maxsize=32)
def _tokenizer(encoding: str, num_languages: int, language: str | None,
               task: str | None) -> Tokenizer:
    """One Tokenizer per setting, so its cached token sets (the non-speech symbols, encoded
    from ~100 strings) are computed once, not for every 30-s window."""
    return Tokenizer(get_encoding(encoding, num_languages), num_languages, language, task)
