"""audio_extractor: not yet available in this reimplementation (see the project's issues)."""

import sys


def main() -> None:
    sys.exit("audio_extractor.py is not yet available in this reimplementation; see README.md for what works today.")


if __name__ == "__main__":
    main()
