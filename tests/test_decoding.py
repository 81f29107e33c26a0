"""Decoding helpers that must give exactly what their plain numpy definition gives."""

from __future__ import annotations

import numpy as np
import pytest

from maxwhisper.decoding import _top_k


@pytest.mark.parametrize("seed", range(4))
def test_top_k_equals_a_full_sort(seed):
    """Random sizes and k, with masked (-inf) stretches as the timestamp rule leaves them,
    and with ties."""
    rng = np.random.default_rng(seed)
    for trial in range(300):
        n = int(rng.integers(1, 60000))
        k = int(rng.integers(1, min(n, 12) + 1))
        values = rng.standard_normal(n).astype(np.float32)
        if trial % 3 == 0:
            values[: int(rng.integers(0, n))] = -np.inf
        if trial % 5 == 0:
            values = np.round(values, 1)
        top = _top_k(values, k)
        assert len(set(top.tolist())) == k
        assert np.array_equal(values[top], np.sort(values)[::-1][:k])


class ScriptedDecoder:
    """A stand-in engine whose logits pick the next token of `script` after `prompt`, and which
    fails if its cache ever holds a token that was not chosen when it is asked for more."""

    def __init__(self, script: list[int]):
        from maxwhisper.weights import ModelDimensions

        self.dims = ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)  # tiny.en's
        self.script, self.calls, self.prompt = script, 0, None

    def new_cache(self, batch: int):
        return ScriptedCache()

    def decode_step(self, tokens, features, cache, positions=None):
        self.calls += 1
        if self.prompt is None:
            self.prompt = len(tokens[0])
        sampled = cache.tokens[self.prompt:]
        assert sampled == self.script[:len(sampled)], "the cache holds a token not chosen"
        logits = np.zeros((1, len(positions), self.dims.n_vocab), np.float32)
        for row, position in enumerate(positions):
            position %= len(tokens[0])
            done = len(cache.tokens) + position + 1 - self.prompt  # tokens sampled before it
            if 0 <= done < len(self.script):
                logits[0, row, self.script[done]] = 10.0
        cache.tokens += [int(t) for t in tokens[0]]
        return logits


class ScriptedCache:
    def __init__(self):
        self.tokens: list[int] = []

    @property
    def length(self) -> int:
        return len(self.tokens)

    def rewind(self, n: int) -> None:
        del self.tokens[-n:]


def test_timestamp_guess_gives_the_same_tokens_in_fewer_steps(monkeypatch):
    """A right guess (a segment opening where the last one closed) saves a step; a wrong one
    (a later opening timestamp, the end of text) is forgotten before the next step."""
    from maxwhisper.decoding import DecodingOptions, decode
    from maxwhisper.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(False)
    t = tokenizer.timestamp_begin
    words = [tokenizer.encode(w)[0] for w in (" hello", " world", " again", " there")]
    script = [t, words[0], words[1], t + 10, t + 10, words[2], t + 20, t + 22, words[3], t + 30,
              tokenizer.eot]
    results = {}
    for guessing in ("0", "1"):
        monkeypatch.setenv("MAXWHISPER_TIMESTAMP_GUESS", guessing)
        engine = ScriptedDecoder(script)
        result = decode(engine, None, DecodingOptions(language="en"), features=object())
        results[guessing] = (result.tokens, result.avg_logprob, engine.calls)
    assert results["0"][0] == results["1"][0] == script[:-1]
    assert results["0"][1] == results["1"][1]  # the same logits were scored
    assert results["1"][2] == results["0"][2] - 1  # one right guess (t + 10), two wrong ones
