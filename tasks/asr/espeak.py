"""eSpeak NG speech synthesis through ctypes (library and data from ``espeakng_loader``).

eSpeak NG keeps all of its state in process-global C statics, and that state
leaks from one utterance into the next: synthesizing the same text twice in a
row gives different samples (the glottal-pulse phase, pitch flutter index and
random generator carry over; ``espeak_Terminate`` + ``espeak_Initialize`` does
not reset them). For a corpus that must be byte-identical on every rerun, each
call to :meth:`EspeakSynthesizer.synthesize` therefore loads the library
afresh (``dlopen``), synthesizes, and unloads it again (``dlclose``). That
costs ~3 ms, mostly reading the English dictionary, and makes the output a pure
function of (voice, parameters, text), independent of call history and of
which pool worker runs it. Voices with a "breath" setting (f2, f3, f5...) also
draw noise from eSpeak's own random generator, which ``espeak_Initialize``
seeds from the clock, so each call reseeds it (``espeak_ng_SetRandSeed``).

Caveat: if some other code in the same process keeps libespeak-ng loaded
(e.g. a phonemizer using ``espeakng_loader``), ``dlclose`` cannot unload it,
the state is shared with that code, and the byte-exactness above is lost.
"""

from __future__ import annotations

import _ctypes
import ctypes
import os
import threading

import numpy as np

import espeakng_loader

# espeak_AUDIO_OUTPUT / espeak_POSITION_TYPE / espeak_PARAMETER / flag values from speak_lib.h.
AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
ESPEAK_RATE = 1
ESPEAK_PITCH = 3
ESPEAK_RANGE = 4
# Without this option a missing data directory makes the C library call exit().
ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
EE_OK = 0
EE_NOT_FOUND = 2

SAMPLE_RATE = 22050  # what espeak_Initialize reports for the bundled data
DEFAULT_VOICE = "en-us+f3"

# Ranges documented in speak_lib.h (rate in words per minute).
RATE_RANGE = (80, 450)
PITCH_RANGE = (0, 100)

# Voice identifiers are the lang/ file names (case-insensitive): British English
# is plain "en" -- "en-gb" is only its language code and SetVoiceByName rejects
# it, so we map that alias ourselves.
ENGLISH_ACCENTS: tuple[str, ...] = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)

_ACCENT_ALIASES = {"en-gb": "en"}

# One library load at a time per process: the C state is global, and two
# threads dlopen-ing the same path would share (and corrupt) one instance.
_LOCK = threading.Lock()

RAND_SEED = 0  # for eSpeak's noise generator (breathy voices)

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(ValueError):
    """A synthesis request eSpeak NG cannot serve (unknown voice, bad parameter, library error)."""


def data_path() -> str:
    """The ``espeak-ng-data`` directory shipped with ``espeakng_loader``."""
    return espeakng_loader.get_data_path()


def list_english_accents() -> list[str]:
    """English accents as voice names ``espeak_SetVoiceByName`` accepts, sorted.

    These are the lower-cased ``espeak-ng-data/lang/gmw/en*`` file names
    (``"en"`` is British English). The Shavian-alphabet entry is a writing
    system, not an accent, and is left out.
    """
    lang_dir = os.path.join(data_path(), "lang", "gmw")
    names = {n.lower() for n in os.listdir(lang_dir) if n.lower().startswith("en")}
    names.discard("en-shaw")
    return sorted(names)


def list_variants() -> list[str]:
    """Voice variants (``voices/!v/*`` file names, used as ``accent+variant``), sorted."""
    return sorted(os.listdir(os.path.join(data_path(), "voices", "!v")))


def _bind(lib: ctypes.CDLL) -> None:
    """Declare the prototypes we call (ctypes would otherwise guess int for everything)."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_Terminate.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None


class EspeakSynthesizer:
    """Text to int16 waveform with eSpeak NG.

    Thread-safe (calls are serialized by a process-wide lock). Each call is
    independent: the same arguments always give the same samples.
    """

    def __init__(self) -> None:
        self._library_path = espeakng_loader.get_library_path()
        self._data_path = data_path()
        self._variants = frozenset(list_variants())
        self._chunks: list[np.ndarray] = []
        # Keep a reference: the C library holds this pointer while it is loaded.
        self._callback = _SynthCallback(self._on_samples)

    @property
    def sample_rate(self) -> int:
        """Output sample rate of :meth:`synthesize` (Hz)."""
        return SAMPLE_RATE

    def _on_samples(self, wav, num_samples: int, events) -> int:
        # wav is NULL at the end of synthesis; 0 means "continue".
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def _check_request(self, voice: str, rate: int, pitch: int, pitch_range: int) -> None:
        # espeak_SetVoiceByName silently ignores an unknown "+variant", so check it here.
        _, plus, variant = voice.partition("+")
        if plus and variant not in self._variants:
            raise EspeakError(f"unknown eSpeak voice variant {variant!r} in voice {voice!r}")
        for name, value, (lo, hi) in (
            ("rate", rate, RATE_RANGE),
            ("pitch", pitch, PITCH_RANGE),
            ("pitch_range", pitch_range, PITCH_RANGE),
        ):
            if not lo <= value <= hi:
                raise EspeakError(f"eSpeak {name}={value} outside [{lo}, {hi}]")

    def synthesize(
        self,
        text: str,
        *,
        voice: str = DEFAULT_VOICE,
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
    ) -> tuple[np.ndarray, int]:
        """Synthesize ``text``; returns (int16 samples, sample rate 22050).

        ``voice`` is ``accent`` or ``accent+variant`` (e.g. ``"en-gb-x-rp+m3"``),
        ``rate`` is words per minute, ``pitch`` and ``pitch_range`` are 0..100.
        Raises :class:`EspeakError` for an unknown voice or out-of-range value.
        """
        self._check_request(voice, rate, pitch, pitch_range)
        accent, plus, variant = voice.partition("+")
        voice = _ACCENT_ALIASES.get(accent.lower(), accent) + plus + variant
        with _LOCK:
            lib = ctypes.CDLL(self._library_path)
            try:
                _bind(lib)
                return self._synthesize_locked(lib, text, voice, rate, pitch, pitch_range)
            finally:
                lib.espeak_Terminate()
                # Unload so that the next call starts from pristine C statics.
                _ctypes.dlclose(lib._handle)
                del lib

    def _synthesize_locked(
        self, lib: ctypes.CDLL, text: str, voice: str, rate: int, pitch: int, pitch_range: int
    ) -> tuple[np.ndarray, int]:
        # espeak_Initialize accepts the folder holding espeak-ng-data (or that folder itself).
        parent = os.path.dirname(self._data_path).encode()
        sample_rate = lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, parent, ESPEAK_INITIALIZE_DONT_EXIT
        )
        if sample_rate != SAMPLE_RATE:
            raise EspeakError(
                f"espeak_Initialize failed (returned {sample_rate}) for data {self._data_path}"
            )
        lib.espeak_SetSynthCallback(self._callback)
        status = lib.espeak_SetVoiceByName(voice.encode("utf-8"))
        if status == EE_NOT_FOUND:
            raise EspeakError(f"unknown eSpeak voice {voice!r}")
        if status != EE_OK:
            raise EspeakError(f"espeak_SetVoiceByName({voice!r}) failed with status {status}")
        parameters = ((ESPEAK_RATE, rate), (ESPEAK_PITCH, pitch), (ESPEAK_RANGE, pitch_range))
        for parameter, value in parameters:
            status = lib.espeak_SetParameter(parameter, int(value), 0)
            if status != EE_OK:
                raise EspeakError(
                    f"espeak_SetParameter({parameter}, {value}) failed with status {status}"
                )
        data = text.encode("utf-8")
        self._chunks = []
        lib.espeak_ng_SetRandSeed(RAND_SEED)  # see the module docstring
        status = lib.espeak_Synth(
            data, len(data) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None
        )
        if status != EE_OK:
            raise EspeakError(f"espeak_Synth failed with status {status} for text {text!r}")
        lib.espeak_Synchronize()
        chunks, self._chunks = self._chunks, []
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return samples.astype(np.int16, copy=False), sample_rate
