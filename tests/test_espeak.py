"""eSpeak NG synthesis through ctypes (the real library, no mocks)."""

import threading

import numpy as np
import pytest

from tasks.asr import espeak

SENTENCE = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def synth() -> espeak.EspeakSynthesizer:
    return espeak.EspeakSynthesizer()


def test_sentence_is_audible_and_plausibly_long(synth):
    samples, rate = synth.synthesize(SENTENCE)
    assert rate == espeak.SAMPLE_RATE == 22050
    assert samples.dtype == np.int16 and samples.ndim == 1
    duration = len(samples) / rate
    # Nine words at 175 words per minute is ~3 s.
    assert 1.5 < duration < 5.0, duration
    rms = np.sqrt(np.mean(samples.astype(np.float64) ** 2))
    assert rms > 500, rms
    assert np.abs(samples).max() > 5000


def test_slower_rate_gives_longer_audio(synth):
    fast, _ = synth.synthesize(SENTENCE, rate=200)
    slow, _ = synth.synthesize(SENTENCE, rate=120)
    assert len(slow) > 1.3 * len(fast)


def test_same_request_gives_identical_samples(synth):
    first, _ = synth.synthesize(SENTENCE, voice="en-gb-x-rp+f3", pitch=30)
    synth.synthesize("something else in between", voice="en-us+m7", pitch=70)
    again, _ = synth.synthesize(SENTENCE, voice="en-gb-x-rp+f3", pitch=30)
    np.testing.assert_array_equal(first, again)


def test_voices_and_pitches_differ(synth):
    outputs = {
        "default": synth.synthesize(SENTENCE, voice="en-us+m3", pitch=50)[0],
        "pitch": synth.synthesize(SENTENCE, voice="en-us+m3", pitch=80)[0],
        "variant": synth.synthesize(SENTENCE, voice="en-us+f2", pitch=50)[0],
        "accent": synth.synthesize(SENTENCE, voice="en-gb-scotland+m3", pitch=50)[0],
    }
    digests = {name: samples.tobytes() for name, samples in outputs.items()}
    assert len(set(digests.values())) == len(digests)


def test_accents_and_variants_are_listed_and_usable(synth):
    accents = espeak.list_english_accents()
    assert set(espeak.ENGLISH_ACCENTS) <= set(accents)
    variants = espeak.list_variants()
    assert {"m1", "f3"} <= set(variants)
    for accent in accents:
        samples, _ = synth.synthesize("hello there", voice=f"{accent}+m1")
        assert len(samples) > 0
    # en-gb is British English's language code; it is accepted as an alias of "en".
    np.testing.assert_array_equal(
        synth.synthesize("hello", voice="en-gb")[0], synth.synthesize("hello", voice="en")[0]
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"voice": "xx-nowhere"}, "unknown eSpeak voice 'xx-nowhere'"),
        ({"voice": "en-us+nosuchvariant"}, "unknown eSpeak voice variant 'nosuchvariant'"),
        ({"pitch": 101}, "pitch=101 outside"),
        ({"rate": 10}, "rate=10 outside"),
    ],
)
def test_bad_requests_raise(synth, kwargs, message):
    with pytest.raises(espeak.EspeakError, match=message):
        synth.synthesize("hello", **kwargs)
    # The library is still usable afterwards.
    assert len(synth.synthesize("hello")[0]) > 0


def test_threads_are_serialized(synth):
    expected, _ = synth.synthesize(SENTENCE, voice="en-us+m2")
    results = []

    def work():
        results.append(synth.synthesize(SENTENCE, voice="en-us+m2")[0])

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    for samples in results:
        np.testing.assert_array_equal(samples, expected)
