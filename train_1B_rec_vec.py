"""Train the StableAvatar 1.3B DiT + audio adapter on 832x480 and 480x832 clips, batches interleaved
(the original's `train_1B_rec_vec.py`; fine-tune the square model with --transformer_path).

    bash train_1B_rec_vec.sh         # every GPU of this machine (docs/training.md), or:
    accelerate launch train_1B_rec_vec.py --pretrained_model_name_or_path checkpoints/Wan2.1-Fun-V1.1-1.3B-InP
        --pretrained_wav2vec_path checkpoints/wav2vec2-base-960h
        --transformer_path checkpoints/StableAvatar-1.3B/transformer3d-square.pt
        --train_data_rec_dir talking_face_data/video_rec_path.txt
        --train_data_vec_dir talking_face_data/video_vec_path.txt --output_dir output_1B_rec_vec_dir

Everything but the buckets is train_1B_square.py; add --train_lora for the LoRA variant
(train_1B_rec_vec_lora.py: rank 128, alpha 64, plus the full audio adapter). See docs/training.md.
"""

from wan.data.buckets import BUCKET_SETS
from wan.training.cli import build_parser, run

BUCKETS = BUCKET_SETS["rec_vec"]  # the only difference from train_1B_square.py


def main(args) -> None:
    run(args, BUCKETS)


if __name__ == "__main__":
    main(build_parser(__doc__, BUCKETS).parse_args())
