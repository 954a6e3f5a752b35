"""Train the StableAvatar 1.3B DiT + audio adapter on 512x512 clips (the original's `train_1B_square.py`).

    bash train_1B_square.sh          # every GPU of this machine (docs/training.md), or:
    accelerate launch train_1B_square.py --pretrained_model_name_or_path checkpoints/Wan2.1-Fun-V1.1-1.3B-InP
        --pretrained_wav2vec_path checkpoints/wav2vec2-base-960h
        --train_data_square_dir talking_face_data/video_square_path.txt --output_dir output_1B_square_dir

The defaults below are the original's train_1B_square.sh settings (lr 2e-5, 81 frames, bf16, ...). Writes
<output_dir>/checkpoint-<step>/ (resumable state + transformer3d-checkpoint-<step>.pt, which
`inference.py --transformer_path` loads) and sample/sample-<step>.mp4 validation clips. docs/training.md has
the data layout, a CPU smoke run, every flag next to the original's value, and the multi-GPU / DeepSpeed set-ups.
"""

from wan.data.buckets import BUCKET_SETS
from wan.training.cli import build_parser, run

BUCKETS = BUCKET_SETS["square"]  # the only difference from train_1B_rec_vec.py


def main(args) -> None:
    run(args, BUCKETS)


if __name__ == "__main__":
    main(build_parser(__doc__, BUCKETS).parse_args())
