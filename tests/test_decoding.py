"""Decoding helpers that must give exactly what their plain numpy definition gives."""

from __future__ import annotations

import numpy as np
import pytest

from maxwhisper.decoding import _top_k_rows


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
        top = _top_k_rows(values[None], k)[0]
        assert np.array_equal(top, np.argsort(-values, kind="stable")[:k])  # ties by index


@pytest.mark.parametrize("seed", range(2))
def test_top_k_of_rows_equals_each_rows_full_sort(seed):
    """Rows of one call (beams) each get their own top k: rows fully masked but for a few
    values, rows with ties, sizes with and without a short last block."""
    rng = np.random.default_rng(seed)
    for trial in range(100):
        rows, n = int(rng.integers(1, 8)), int(rng.integers(1, 60000))
        k = int(rng.integers(1, min(n, 12) + 1))
        values = rng.standard_normal((rows, n)).astype(np.float32)
        masked = rng.random(rows) < 0.4
        values[masked, : int(rng.integers(0, n))] = -np.inf
        if trial % 4 == 0:
            values = np.round(values, 1)
        expected = np.argsort(-values, axis=1, kind="stable")[:, :k]
        assert np.array_equal(_top_k_rows(values, k), expected)


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


def _decoded_with_and_without(monkeypatch, script: list[int], switch: str) -> dict:
    """Decode the scripted window with the guess `switch` (an environment variable) off and
    on, the other guess off: {"0" | "1": (tokens, avg_logprob, decoder calls)}."""
    from maxwhisper.decoding import DecodingOptions, decode

    results = {}
    for guessing in ("0", "1"):
        for name in ("MAXWHISPER_TIMESTAMP_GUESS", "MAXWHISPER_TEXT_GUESS"):
            monkeypatch.setenv(name, guessing if name == switch else "0")
        engine = ScriptedDecoder(script)
        result = decode(engine, None, DecodingOptions(language="en"), features=object())
        results[guessing] = (result.tokens, result.avg_logprob, engine.calls)
    assert results["0"][0] == results["1"][0] == script[:-1]
    assert results["0"][1] == results["1"][1]  # the same logits were scored
    return results


def test_timestamp_guess_gives_the_same_tokens_in_fewer_steps(monkeypatch):
    """A right guess (a segment opening where the last one closed) saves a step; a wrong one
    (a later opening timestamp, the end of text) is forgotten before the next step."""
    from maxwhisper.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(False)
    t = tokenizer.timestamp_begin
    words = [tokenizer.encode(w)[0] for w in (" hello", " world", " again", " there")]
    script = [t, words[0], words[1], t + 10, t + 10, words[2], t + 20, t + 22, words[3], t + 30,
              tokenizer.eot]
    results = _decoded_with_and_without(monkeypatch, script, "MAXWHISPER_TIMESTAMP_GUESS")
    assert results["1"][2] == results["0"][2] - 1  # one right guess (t + 10), two wrong ones


def test_text_guess_gives_the_same_tokens_in_fewer_steps(monkeypatch):
    """After a text token, the token that followed it earlier is guessed: right where the text
    repeats itself (a step saved each time), forgotten where it does not."""
    from maxwhisper.decoding import _follower
    from maxwhisper.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(False)
    t = tokenizer.timestamp_begin
    a, b, c, d = (tokenizer.encode(w)[0] for w in (" one", " two", " three", " four"))
    # "one two three" twice, then "one two four": after the second "one", "two" is guessed
    # right (and "three" comes with that step's second position); after that "three", "one"
    # is right (and "two" comes with it); after the third "two", "three" is wrong ("four")
    script = [t, a, b, c, a, b, c, a, b, d, t + 50, tokenizer.eot]
    assert _follower(np.array([a, b, c, a, b]), tokenizer.eot) == c  # the pair's follower
    assert _follower(np.array([a, c, b, d, a]), tokenizer.eot) == c
    assert _follower(np.array([a, b, c]), tokenizer.eot) is None
    results = _decoded_with_and_without(monkeypatch, script, "MAXWHISPER_TEXT_GUESS")
    assert results["1"][2] == results["0"][2] - 2  # two right guesses, two steps saved


def test_text_guess_is_made_where_it_pays(monkeypatch):
    """Unset, the text guess follows the measured step costs and hit rate: on until both kinds
    of step are timed, then on where a second position costs less than the steps it saves."""
    from maxwhisper.decoding import DecodingOptions, GuessCosts, decode, guess_costs
    from maxwhisper.tokenizer import get_tokenizer

    def timed(one_ms: float, two_ms: float) -> GuessCosts:
        costs = GuessCosts()
        assert costs.text_guess_pays()  # nothing timed yet
        for _ in range(64):
            costs.record_step(1, one_ms / 1000)
            costs.record_step(2, two_ms / 1000)
        return costs

    assert timed(3.2, 3.4).text_guess_pays()  # a Zen 4 with AVX-512
    avx2 = timed(7.0, 9.2)  # a Zen 3 with AVX2, one guess right in eight
    assert not avx2.text_guess_pays()
    for taken in [True, False] * 20:  # where the text repeats itself, one in two pays
        avx2.record_text_guess(taken)
    assert avx2.text_guess_pays()

    monkeypatch.delenv("MAXWHISPER_TEXT_GUESS", raising=False)
    monkeypatch.delenv("MAXWHISPER_TIMESTAMP_GUESS", raising=False)
    tokenizer = get_tokenizer(False)
    t = tokenizer.timestamp_begin
    a, b, c = (tokenizer.encode(w)[0] for w in (" one", " two", " three"))
    script = [t, a, b, c, a, b, c, a, b, c, t + 50, tokenizer.eot]
    engine = ScriptedDecoder(script)
    result = decode(engine, None, DecodingOptions(language="en"), features=object())
    assert result.tokens == script[:-1]
    costs = guess_costs(engine)  # the engine's costs, learnt in that window
    assert len(costs.one) + len(costs.two) == engine.calls - 1  # every step but the prompt
    assert costs.text_tries > 8


def test_logsumexp_of_rows_equals_each_row_alone():
    """The timestamp rule's totals for all rows at once are, bit for bit, what each row gives
    alone (a 1-D float64 sum), also for rows masked to -inf in part or whole."""
    from maxwhisper.decoding import logsumexp_rows

    def alone(x):
        top = float(np.max(x))
        return -np.inf if top == -np.inf else top + float(np.log(np.sum(np.exp(x - top))))

    rng = np.random.default_rng(0)
    for trial in range(50):
        x = (rng.standard_normal((int(rng.integers(1, 9)), 1501)) * 5).astype(np.float32)
        x[rng.random(x.shape) < trial / 50] = -np.inf
        x[0, :] = -np.inf if trial % 7 == 0 else x[0, :]
        x = x.astype(np.float64)
        assert np.array_equal(logsumexp_rows(x), np.array([alone(row) for row in x]))
