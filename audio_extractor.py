"""Audio track of a video → WAV (the original's flags).

    python audio_extractor.py --video_path X.mp4 --saved_audio_path Y.wav

16-bit PCM at 44.1 kHz with the source's channels, as the original's moviepy `write_audiofile(codec='pcm_s16le')`;
decoded and resampled with PyAV (no ffmpeg executable needed). A video without an audio track is an error.
"""

import argparse
import sys


def main(args: argparse.Namespace) -> int:
    try:
        from wan.data.media import extract_audio
    except ImportError as e:  # not the project's environment
        print(f"error: {e}; install the project first: pip install -e .", file=sys.stderr)
        return 2
    try:
        path = extract_audio(args.video_path, args.saved_audio_path)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"audio saved to {path}")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video_path", type=str, required=True, help="input video (mp4, mov, mkv, ...)")
    p.add_argument("--saved_audio_path", type=str, required=True, help="output .wav")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
