"""Speech-recognition task: features, text, Conformer-CTC model, CTC and metrics."""
