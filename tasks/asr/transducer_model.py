"""The transducer's prediction and joint networks (Graves 2012; the paper's
Conformer-Transducer uses an LSTM prediction network).

* prediction network: embedding of the previous label (the blank stands for
  "no label yet") and one LSTM; in training it reads the whole label
  sequence at once (teacher forcing), in decoding one label per step;
* joint network: ``tanh(W_enc · enc + W_pred · pred)`` projected to the
  vocabulary and the blank, for every (frame, label position) pair.
"""

from __future__ import annotations

import tensorflow as tf


class PredictionNetwork(tf.keras.layers.Layer):
    """Embedding + LSTM over the previous labels."""

    def __init__(self, vocab_size: int, embedding_dim: int, units: int, blank: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.embedding_dim, self.units = vocab_size, embedding_dim, units
        self.blank = blank
        self.embedding = tf.keras.layers.Embedding(vocab_size, embedding_dim,
                                                   name="prediction_embedding")
        self.lstm = tf.keras.layers.LSTM(units, return_sequences=True, return_state=True,
                                         name="prediction_lstm")

    def call(self, labels: tf.Tensor) -> tf.Tensor:
        """[B, U] labels -> [B, U+1, units]: position u has read labels[:u]."""
        start = tf.fill([tf.shape(labels)[0], 1], tf.cast(self.blank, labels.dtype))
        outputs, _, _ = self.lstm(self.embedding(tf.concat([start, labels], axis=1)))
        return outputs

    def initial_state(self, batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        zeros = tf.zeros([batch, self.units])
        return zeros, zeros

    def step(self, labels: tf.Tensor, state: tuple[tf.Tensor, tf.Tensor]
             ) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor]]:
        """One label per example: ([B], (h, c)) -> ([B, units], (h, c))
        (`transducer_greedy.PredictFn`)."""
        output, h, c = self.lstm(self.embedding(labels[:, None]), initial_state=list(state))
        return output[:, 0], (h, c)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size,
                "embedding_dim": self.embedding_dim, "units": self.units, "blank": self.blank}


class JointNetwork(tf.keras.layers.Layer):
    """``out(tanh(enc_proj(enc) + pred_proj(pred)))`` over every (t, u) pair."""

    def __init__(self, joint_dim: int, vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        self.joint_dim, self.vocab_size = joint_dim, vocab_size
        self.encoder_projection = tf.keras.layers.Dense(joint_dim, name="joint_encoder")
        self.prediction_projection = tf.keras.layers.Dense(joint_dim, use_bias=False,
                                                           name="joint_prediction")
        self.output_projection = tf.keras.layers.Dense(vocab_size, name="joint_output")

    def call(self, encoder_out: tf.Tensor, prediction_out: tf.Tensor) -> tf.Tensor:
        """[B, T, E] and [B, U+1, P] -> [B, T, U+1, V] logits."""
        hidden = (self.encoder_projection(encoder_out)[:, :, None, :]
                  + self.prediction_projection(prediction_out)[:, None, :, :])
        return self.output_projection(tf.tanh(hidden))

    def step(self, encoder_frame: tf.Tensor, prediction_out: tf.Tensor) -> tf.Tensor:
        """One frame against one prediction output: [B, E], [B, P] -> [B, V]
        (`transducer_greedy.JoinFn`)."""
        return self(encoder_frame[:, None, :], prediction_out[:, None, :])[:, 0, 0]

    def get_config(self):
        return {**super().get_config(), "joint_dim": self.joint_dim,
                "vocab_size": self.vocab_size}
