"""Train the StableAvatar 1.3B DiT + audio adapter on 512x512 clips (the original's `train_1B_square.py`).

    accelerate launch --num_processes 4 --mixed_precision bf16 train_1B_square.py \
        --pretrained_model_name_or_path checkpoints/Wan2.1-Fun-V1.1-1.3B-InP \
        --pretrained_wav2vec_path checkpoints/wav2vec2-base-960h \
        --train_data_square_dir talking_face_data/video_square_path.txt --output_dir output_1B_square_dir \
        --video_sample_n_frames 81 --gradient_checkpointing --learning_rate 2e-5 ... (see train_1B_square.sh)

Writes <output_dir>/checkpoint-<step>/ (resumable state + transformer3d-checkpoint-<step>.pt, which
`inference.py --transformer_path` loads) and sample/sample-<step>.mp4 validation clips. docs/training.md has
the data layout, every flag and the multi-GPU / DeepSpeed set-ups.
"""

from wan.data.buckets import BUCKET_SETS
from wan.training.cli import build_parser, run

BUCKETS = BUCKET_SETS["square"]  # the only difference from train_1B_rec_vec.py


def main(args) -> None:
    run(args, BUCKETS)


if __name__ == "__main__":
    main(build_parser(__doc__, BUCKETS).parse_args())
