"""Vocal stem of an audio file with an MDX-Net ONNX model (upstream spelling of the file name kept).

    python vocal_seperator.py --audio_separator_model_file checkpoints/Kim_Vocal_2.onnx \
        --audio_file_path path/audio.wav [--saved_vocal_path path/vocal.wav]

Computes what the original's audio-separator call computes (0.38.1, default MDX settings: hop 1024, segment =
the model's dim_t, overlap 0.25) with an own onnxruntime runner (wan/data/vocals.py says why and how). Output:
16-bit PCM stereo 44.1 kHz WAV. Upstream ignores --saved_vocal_path and always writes <dir of audio>/vocal.wav;
here that stays the default and --saved_vocal_path is honoured when given. Needs onnxruntime
(pip install -e '.[audio]') and Kim_Vocal_2.onnx, which the original README's download puts in checkpoints/ (it sits
at the top of https://huggingface.co/FrancisRing/StableAvatar):
    hf download FrancisRing/StableAvatar --include Kim_Vocal_2.onnx --local-dir checkpoints
"""

import argparse
import sys
from pathlib import Path


def main(args: argparse.Namespace) -> int:
    try:
        from wan.data.vocals import separate_file
    except ImportError as e:  # numpy/torch missing: not the project's environment
        print(f"error: {e}; install the project first: pip install -e '.[audio]'", file=sys.stderr)
        return 2
    audio = Path(args.audio_file_path)
    out = Path(args.saved_vocal_path) if args.saved_vocal_path else audio.parent / "vocal.wav"
    try:
        path = separate_file(args.audio_separator_model_file, audio, out, n_fft=args.n_fft,
                             compensate=args.compensate)
    except (ImportError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"vocals saved to {path}")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio_file_path", type=str, required=True, help="input mix (wav/flac/mp3/mp4/...)")
    p.add_argument("--saved_vocal_path", type=str, default=None,
                   help="output wav (default: vocal.wav beside the input, as upstream)")
    p.add_argument("--audio_separator_model_file", type=str, required=True,
                   help="MDX-Net .onnx, e.g. checkpoints/Kim_Vocal_2.onnx (from FrancisRing/StableAvatar on the "
                        "Hugging Face Hub: hf download FrancisRing/StableAvatar --include Kim_Vocal_2.onnx "
                        "--local-dir checkpoints)")
    p.add_argument("--n_fft", type=int, default=None, help="override the model's n_fft (unknown models)")
    p.add_argument("--compensate", type=float, default=None, help="override the model's compensation factor")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
