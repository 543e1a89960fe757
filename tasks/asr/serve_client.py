"""Send real audio to a running TensorFlow Serving and print the transcripts.

  python -m tasks.asr.serve_client --audio=utt.flac [--audio=utt2.flac] \\
      --model_name=asr --rest_url=http://localhost:8501 --grpc_target=localhost:8500

Talks to the ``serving_default`` signature of a model exported by
``python -m tff_prune.export`` (see ``docs/serving.md``): raw float32 audio
rows (zero-padded to the longest file) and their lengths in samples, over
REST ``:predict`` (row format, audio as a JSON float list) and/or gRPC
``PredictionService/Predict`` (tensorflow-serving-api). Audio files must be
mono-readable by soundfile at the model's sample rate (16 kHz); samples are
read as 16-bit PCM and scaled by 1/32768, exactly as training read them.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import soundfile

SIGNATURE = "serving_default"
SAMPLE_RATE = 16000


def read_audio(path: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32[N] samples in [-1, 1) of an audio file's first channel (16-bit PCM / 32768)."""
    pcm, rate = soundfile.read(path, dtype="int16", always_2d=True)
    if rate != sample_rate:
        raise ValueError(f"{path}: sample rate {rate} Hz, the model needs {sample_rate} Hz")
    return pcm[:, 0].astype(np.float32) / 32768.0


def batch_audio(audios: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pads utterances into float32[B, N_max] and their int32[B] lengths."""
    if not audios:
        raise ValueError("no audio to send")
    lengths = np.array([len(a) for a in audios], np.int32)
    batch = np.zeros([len(audios), max(int(lengths.max()), 1)], np.float32)
    for i, a in enumerate(audios):
        batch[i, :len(a)] = a
    return batch, lengths


# ----------------------------------------------------------------------------- REST


def rest_request_body(audios: Sequence[np.ndarray], signature_name: str = SIGNATURE) -> dict:
    """The JSON body of a REST ``:predict`` call, row ("instances") format.

    Each instance is one utterance: ``audio`` as a float list (float32 values
    written as their exact decimal, so TF Serving rebuilds the same tensor)
    padded to the longest, and ``audio_lengths`` its sample count.
    """
    batch, lengths = batch_audio(audios)
    return {"signature_name": signature_name,
            "instances": [{"audio": row.tolist(), "audio_lengths": int(n)}
                          for row, n in zip(batch, lengths)]}


def rest_url(base_url: str, model_name: str, version: Optional[int] = None) -> str:
    """``BASE/v1/models/NAME[/versions/N]`` (append ``:predict`` to call it)."""
    url = f"{base_url.rstrip('/')}/v1/models/{model_name}"
    return url if version is None else f"{url}/versions/{version}"


def _http_json(url: str, body: Optional[dict] = None, timeout: float = 60.0) -> Any:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        # TF Serving puts the reason in {"error": ...}: surface it.
        raise RuntimeError(f"{url}: HTTP {e.code}: {e.read().decode('utf-8', 'replace')}") from None


def rest_predict(base_url: str, model_name: str, audios: Sequence[np.ndarray],
                 version: Optional[int] = None, timeout: float = 60.0) -> list[str]:
    """Transcripts from TF Serving's REST API (``POST .../models/NAME:predict``)."""
    body = rest_request_body(audios)
    result = _http_json(rest_url(base_url, model_name, version) + ":predict", body, timeout)
    return [p["transcripts"] for p in result["predictions"]]


def wait_until_available(base_url: str, model_name: str, timeout: float = 60.0,
                         version: Optional[int] = None) -> int:
    """Polls ``GET .../models/NAME`` until a version is AVAILABLE; returns that version."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status = _http_json(rest_url(base_url, model_name, version), timeout=5.0)
            for entry in status.get("model_version_status", []):
                if entry.get("state") == "AVAILABLE":
                    return int(entry["version"])
            last = json.dumps(status)
        except (OSError, RuntimeError) as e:
            last = str(e)
        time.sleep(0.5)
    raise TimeoutError(f"model {model_name!r} not available at {base_url} after {timeout} s: {last}")


# ----------------------------------------------------------------------------- gRPC


def grpc_request(model_name: str, audios: Sequence[np.ndarray], version: Optional[int] = None,
                 signature_name: str = SIGNATURE):
    """A ``tensorflow.serving.PredictRequest`` with the ``audio`` / ``audio_lengths`` tensors."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel

    batch, lengths = batch_audio(audios)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["audio"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.float32))
    request.inputs["audio_lengths"].CopyFrom(tf.make_tensor_proto(lengths, dtype=tf.int32))
    return request


def grpc_predict(target: str, model_name: str, audios: Sequence[np.ndarray],
                 version: Optional[int] = None, timeout: float = 60.0) -> list[str]:
    """Transcripts from TF Serving's gRPC ``PredictionService.Predict`` at ``host:port``."""
    import grpc  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=import-outside-toplevel

    request = grpc_request(model_name, audios, version)
    # Long utterances exceed gRPC's 4 MB default message size.
    options = [("grpc.max_send_message_length", 256 << 20),
               ("grpc.max_receive_message_length", 256 << 20)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=timeout)
    return [s.decode("utf-8") for s in response.outputs["transcripts"].string_val]


# ----------------------------------------------------------------------------- CLI


def _one_line(error: Exception) -> str:
    if callable(getattr(error, "code", None)) and callable(getattr(error, "details", None)):
        return f"{error.code().name}: {error.details()}"  # a grpc.RpcError
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: transcribe ``--audio`` files over REST and/or gRPC."""
    import argparse  # pylint: disable=import-outside-toplevel

    parser = argparse.ArgumentParser(
        prog="python -m tasks.asr.serve_client",
        description="Transcribe audio files with a model served by TensorFlow Serving.")
    parser.add_argument("--audio", action="append", required=True,
                        help="audio file (16 kHz; FLAC, WAV, ...); repeat for a batch")
    parser.add_argument("--model_name", default="asr")
    parser.add_argument("--model_version", type=int, default=None,
                        help="a specific version (default: the one TF Serving serves)")
    parser.add_argument("--rest_url", default="http://localhost:8501")
    parser.add_argument("--grpc_target", default="localhost:8500")
    parser.add_argument("--protocol", choices=("rest", "grpc", "both"), default="both")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        audios = [read_audio(path) for path in args.audio]
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status = 0
    for protocol in (("rest", "grpc") if args.protocol == "both" else (args.protocol,)):
        try:
            if protocol == "rest":
                texts = rest_predict(args.rest_url, args.model_name, audios,
                                     args.model_version, args.timeout)
            else:
                texts = grpc_predict(args.grpc_target, args.model_name, audios,
                                     args.model_version, args.timeout)
        except Exception as e:  # pylint: disable=broad-except
            # One line per failed protocol (connection refused, HTTP / gRPC error).
            print(f"{protocol}: error: {_one_line(e)}", file=sys.stderr)
            status = 1
            continue
        for path, text in zip(args.audio, texts):
            print(f"{protocol}\t{os.path.basename(path)}\t{text}")
    return status


if __name__ == "__main__":
    sys.exit(main())
