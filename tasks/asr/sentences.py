"""Topic-based sentence generation for the synthetic corpus (deliberately non-IID).

Every speaker gets a :class:`SpeakerStyle`: one primary topic, a random subset
of that topic's words, a few words of a secondary topic, and its own subset of
sentence templates. Sentences are 4-12 plain lower-case words (letters and
apostrophes only: numbers are spelled out) -- the CTC vocabulary of
``tasks.asr.text`` -- and transcripts are stored upper-case like LibriSpeech.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

# Per topic: nouns (singular, regular plural unless listed in _IRREGULAR_PLURALS),
# verbs (base form, take an object) and adjectives.
TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "weather": {
        "nouns": (
            "rain", "snow", "wind", "storm", "cloud", "sky", "sun", "fog", "forecast",
            "umbrella", "coat", "thunder", "rainbow", "breeze", "season", "winter",
            "summer", "spring", "autumn", "temperature", "puddle", "jacket", "roof",
            "window", "shower", "frost", "flood", "heat", "morning", "afternoon",
        ),
        "verbs": (
            "watch", "check", "expect", "enjoy", "hate", "predict", "feel", "notice",
            "avoid", "love", "fear", "remember",
        ),
        "adjectives": (
            "cold", "warm", "wet", "dry", "cloudy", "sunny", "windy", "stormy", "grey",
            "bright", "dark", "freezing", "mild", "heavy", "gentle", "strange",
        ),
    },
    "food": {
        "nouns": (
            "bread", "cheese", "apple", "soup", "rice", "chicken", "salad", "cake",
            "coffee", "tea", "butter", "orange", "potato", "tomato", "onion", "pasta",
            "sandwich", "breakfast", "dinner", "lunch", "kitchen", "recipe", "oven",
            "plate", "spoon", "sugar", "lemon", "carrot", "pie", "cookie", "bean", "egg",
        ),
        "verbs": (
            "cook", "eat", "taste", "bake", "buy", "cut", "share", "order", "prepare",
            "serve", "boil", "wash", "try", "finish",
        ),
        "adjectives": (
            "fresh", "sweet", "salty", "hot", "spicy", "delicious", "tasty", "raw",
            "ripe", "crispy", "warm", "simple", "healthy", "homemade",
        ),
    },
    "travel": {
        "nouns": (
            "train", "station", "ticket", "airport", "plane", "hotel", "map", "road",
            "bridge", "city", "village", "island", "passport", "suitcase", "beach",
            "mountain", "border", "journey", "taxi", "bus", "ship", "harbour", "guide",
            "museum", "castle", "street", "tourist", "flight", "platform", "camera",
        ),
        "verbs": (
            "visit", "book", "pack", "find", "miss", "catch", "explore", "cross", "follow",
            "leave", "reach", "photograph", "plan",
        ),
        "adjectives": (
            "long", "short", "busy", "quiet", "foreign", "famous", "ancient", "crowded",
            "empty", "beautiful", "distant", "narrow", "cheap", "expensive",
        ),
    },
    "sports": {
        "nouns": (
            "ball", "team", "match", "goal", "player", "coach", "score", "field", "race",
            "bicycle", "runner", "referee", "stadium", "game", "season", "trophy",
            "tennis", "football", "swimmer", "pool", "whistle", "captain", "helmet",
            "league", "medal", "winner", "practice", "crowd",
        ),
        "verbs": (
            "kick", "throw", "catch", "win", "lose", "join", "train", "watch", "beat",
            "play", "coach", "cheer", "pass",
        ),
        "adjectives": (
            "fast", "strong", "tired", "young", "fit", "brave", "final", "tough",
            "lucky", "proud", "fair", "quick", "slow", "skilled",
        ),
    },
    "home": {
        "nouns": (
            "house", "door", "window", "garden", "chair", "table", "lamp", "sofa",
            "carpet", "kitchen", "bedroom", "bathroom", "wall", "floor", "roof",
            "stairs", "key", "mirror", "blanket", "pillow", "curtain", "shelf", "drawer",
            "fence", "gate", "clock", "basket", "neighbour", "cupboard", "towel",
        ),
        "verbs": (
            "clean", "paint", "open", "close", "fix", "move", "repair", "build", "sweep",
            "lock", "decorate", "sell", "rent",
        ),
        "adjectives": (
            "small", "big", "clean", "messy", "cosy", "old", "new", "bright", "quiet",
            "comfortable", "wooden", "tidy", "broken", "green",
        ),
    },
    "work": {
        "nouns": (
            "office", "meeting", "report", "manager", "project", "computer", "email",
            "desk", "client", "contract", "budget", "deadline", "printer", "colleague",
            "schedule", "plan", "letter", "phone", "document", "salary", "interview",
            "company", "customer", "team", "idea", "task", "question", "answer",
        ),
        "verbs": (
            "write", "send", "read", "sign", "review", "discuss", "finish", "start",
            "prepare", "present", "answer", "update", "print", "check",
        ),
        "adjectives": (
            "important", "urgent", "late", "early", "difficult", "easy", "careful",
            "clear", "useful", "serious", "final", "weekly", "simple", "busy",
        ),
    },
    "animals": {
        "nouns": (
            "dog", "cat", "horse", "cow", "bird", "rabbit", "fox", "bear", "lion",
            "tiger", "monkey", "duck", "goat", "pig", "frog", "owl", "whale", "dolphin",
            "snake", "turtle", "kitten", "puppy", "farm", "forest", "nest", "tail",
            "feather", "zoo", "elephant", "squirrel",
        ),
        "verbs": (
            "feed", "chase", "hear", "see", "follow", "pet", "catch", "watch", "find",
            "scare", "rescue", "love", "carry",
        ),
        "adjectives": (
            "wild", "tame", "furry", "tiny", "huge", "hungry", "sleepy", "clever",
            "noisy", "gentle", "friendly", "shy", "fierce", "brown",
        ),
    },
    "music": {
        "nouns": (
            "song", "piano", "guitar", "drum", "violin", "singer", "band", "concert",
            "melody", "voice", "radio", "record", "note", "choir", "trumpet", "stage",
            "rhythm", "lyric", "album", "orchestra", "dance", "tune", "audience",
            "speaker", "microphone", "flute", "chorus", "festival",
        ),
        "verbs": (
            "play", "sing", "hear", "record", "learn", "practise", "tune", "enjoy",
            "write", "perform", "hum", "love", "teach",
        ),
        "adjectives": (
            "loud", "soft", "beautiful", "sad", "happy", "slow", "lively", "famous",
            "classical", "modern", "gentle", "catchy", "popular", "quiet",
        ),
    },
    "time": {
        "nouns": (
            "hour", "minute", "second", "clock", "watch", "calendar", "morning",
            "evening", "night", "week", "month", "year", "monday", "tuesday",
            "wednesday", "thursday", "friday", "saturday", "sunday", "birthday",
            "holiday", "alarm", "appointment", "weekend", "century", "moment",
            "january", "june", "october", "decade",
        ),
        "verbs": (
            "count", "set", "check", "remember", "forget", "change", "wait", "spend",
            "save", "waste", "mark", "plan",
        ),
        "adjectives": (
            "early", "late", "next", "last", "first", "second", "third", "whole",
            "free", "busy", "long", "short", "exact", "quiet",
        ),
    },
    "health": {
        "nouns": (
            "doctor", "nurse", "hospital", "medicine", "fever", "cough", "headache",
            "heart", "hand", "knee", "back", "pill", "exercise", "sleep", "water",
            "diet", "clinic", "patient", "bandage", "vitamin", "muscle", "injury",
            "appointment", "walk", "breath", "pharmacy", "stomach", "shoulder",
        ),
        "verbs": (
            "visit", "take", "call", "rest", "stretch", "treat", "heal", "drink",
            "avoid", "need", "check", "measure", "protect",
        ),
        "adjectives": (
            "sick", "healthy", "sore", "strong", "weak", "tired", "calm", "painful",
            "better", "worse", "careful", "gentle", "regular", "fit",
        ),
    },
}

# Shared function words and phrases (used by every speaker).
SUBJECTS = ("i", "we", "you", "they")
MODALS = ("can", "will", "should", "could", "might", "must", "would")
DETERMINERS = ("the", "a", "my", "our", "your", "their", "this", "that")
PREPOSITIONS = ("in", "on", "near", "behind", "under", "next to", "after", "before", "with")
TIMES = (
    "today", "tomorrow", "tonight", "every day", "every morning", "this evening",
    "this weekend", "after lunch", "in the morning", "next week", "on friday",
    "at seven o'clock", "at noon", "once a week",
)
INTENSIFIERS = ("very", "quite", "really", "so", "rather", "too")
NUMBERS = (
    "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "fifteen", "twenty", "thirty", "forty", "fifty", "a hundred",
)

# Slots: S subject, M modal, D determiner, N noun, P preposition, T time phrase,
# V verb, A adjective, I intensifier, Q number, NS plural noun.
TEMPLATES: tuple[str, ...] = (
    "D N is A",
    "D N is I A T",
    "S M V D N",
    "S M V D A N T",
    "D A N is P D N",
    "S like to V D N P D N",
    "do you think D N is A",
    "S don't V D N T",
    "there is D A N P D N",
    "S M V D N and D N",
    "D N and D N are A",
    "S said that D N was I A",
    "let's V D A N T",
    "it's A P D N T",
    "when D N is A S M V D N",
    "S want to V D N before D N",
    "S have Q A NS",
    "there are Q NS P D N",
    "S M V Q NS T",
    "why is D N so A",
    "please V D N for me",
    "S never V D N P D N",
)

_IRREGULAR_PLURALS = {
    "child": "children", "man": "men", "woman": "women", "foot": "feet", "tooth": "teeth",
}  # fmt: skip
_UNCHANGED_PLURALS = frozenset({"fish", "sheep", "deer"})

MIN_WORDS = 4
MAX_WORDS = 12
_VALID = re.compile(r"^[a-z']+( [a-z']+)*$")


@dataclasses.dataclass(frozen=True)
class SpeakerStyle:
    """What one speaker talks about and how: its vocabulary and templates."""

    topic: str
    secondary_topic: str
    nouns: tuple[str, ...]
    verbs: tuple[str, ...]
    adjectives: tuple[str, ...]
    templates: tuple[str, ...]


def topic_names() -> list[str]:
    """The built-in topics, sorted."""
    return sorted(TOPICS)


def _subset(
    rng: np.random.Generator, words: tuple[str, ...], fraction: float, minimum: int
) -> list[str]:
    count = min(len(words), max(minimum, int(round(fraction * len(words)))))
    return [words[i] for i in sorted(rng.choice(len(words), size=count, replace=False))]


def make_speaker_style(rng: np.random.Generator, topic: str | None = None) -> SpeakerStyle:
    """Draw a speaker's style (random topic unless given).

    ~60% of the topic's nouns/verbs/adjectives, ~15% of a secondary topic's,
    and 8-12 of the sentence templates.
    """
    names = topic_names()
    if topic is None:
        topic = names[int(rng.integers(len(names)))]
    others = [n for n in names if n != topic]
    secondary = others[int(rng.integers(len(others)))]
    primary_words, secondary_words = TOPICS[topic], TOPICS[secondary]
    fields = {}
    for part in ("nouns", "verbs", "adjectives"):
        own = _subset(rng, primary_words[part], 0.6, 4)
        borrowed = _subset(rng, secondary_words[part], 0.15, 1)
        # A word can be in both topics; keep each once, in a stable order.
        fields[part] = tuple(dict.fromkeys(own + borrowed))
    num_templates = int(rng.integers(8, 13))
    chosen = sorted(rng.choice(len(TEMPLATES), num_templates, replace=False))
    templates = tuple(TEMPLATES[i] for i in chosen)
    return SpeakerStyle(topic=topic, secondary_topic=secondary, templates=templates, **fields)


def pluralize(noun: str) -> str:
    """English plural of a (mostly regular) noun."""
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun in _UNCHANGED_PLURALS:
        return noun
    if noun.endswith(("s", "sh", "ch", "x", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _fill(rng: np.random.Generator, style: SpeakerStyle, template: str) -> str:
    slots = {
        "S": SUBJECTS, "M": MODALS, "D": DETERMINERS, "N": style.nouns, "P": PREPOSITIONS,
        "T": TIMES, "V": style.verbs, "A": style.adjectives, "I": INTENSIFIERS, "Q": NUMBERS,
    }  # fmt: skip
    words: list[str] = []
    for token in template.split():
        if token == "NS":
            words.append(pluralize(_pick(rng, style.nouns)))
        elif token in slots:
            words.extend(_pick(rng, slots[token]).split())
        else:
            words.extend(token.split())
    # "a" before a vowel sound (spelling approximation; good enough for synthetic text).
    for i in range(len(words) - 1):
        if words[i] == "a" and words[i + 1][0] in "aeiou":
            words[i] = "an"
    return " ".join(words)


def generate_sentence(rng: np.random.Generator, style: SpeakerStyle) -> str:
    """One lower-case sentence of 4-12 words in the speaker's style."""
    while True:
        sentence = _fill(rng, style, _pick(rng, style.templates))
        if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
            assert _VALID.match(sentence), sentence
            return sentence


def generate_sentences(
    rng: np.random.Generator,
    style: SpeakerStyle,
    count: int,
    *,
    exclude: set[str] | frozenset[str] = frozenset(),
    max_attempts_per_sentence: int = 200,
) -> list[str]:
    """``count`` distinct sentences in ``style``, none of them in ``exclude``.

    Raises ``ValueError`` if the style cannot produce enough new sentences.
    """
    sentences: list[str] = []
    seen = set(exclude)
    attempts = 0
    while len(sentences) < count:
        attempts += 1
        if attempts > max_attempts_per_sentence * count:
            raise ValueError(f"could only generate {len(sentences)} of {count} distinct sentences")
        sentence = generate_sentence(rng, style)
        if sentence not in seen:
            seen.add(sentence)
            sentences.append(sentence)
    return sentences


def to_transcript(sentence: str) -> str:
    """The LibriSpeech-style transcript of a generated sentence (upper-case)."""
    return sentence.upper()
