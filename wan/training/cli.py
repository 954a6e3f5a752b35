"""The command line of `train_1B_square.py` / `train_1B_rec_vec.py`, built from `TrainConfig`'s fields (name, type,
default, help: one definition), plus the script's bucket flags. The original's flag names are kept, so its
command lines parse; the flags it parses but never reads are accepted in one group and do nothing."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from wan.data.buckets import Bucket

__all__ = ["build_parser", "run", "config_from_args", "parse_size", "COMPAT_GROUP"]

COMPAT_GROUP = "accepted for compatibility with the original's command lines (no effect)"
# the flags the original's .sh files pass that change nothing here (its --low_vram only moves models between CPU
# and GPU; --config_path's yaml holds constants we hard-code), and --local_rank (older launchers pass it)
COMPAT_FLAGS: dict[str, dict] = {
    "--config_path": {}, "--vae_mini_batch": {"type": int}, "--video_repeat": {"type": int},
    "--low_vram": {"action": "store_true"}, "--train_mode": {"help": "no effect ('normal' is refused: the original "
                                                                     "crashes on it)"},
    "--local_rank": {"type": int},
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every default shown as "(default: X)"; a None default is explained in the flag's own help instead."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parse_size(s: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {s!r} must be WIDTHxHEIGHT, e.g. 480x832") from None
    return w, h


def _add_field(group, f: dataclasses.Field, hint) -> None:
    """`--<name>` from one TrainConfig field; a bool that defaults to True also gets `--no_<name>`."""
    types = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    kind = types[0]
    flag, help = f"--{f.name}", f.metadata["help"]
    if f.default is dataclasses.MISSING:
        group.add_argument(flag, required=True, type=kind, help=help)
    elif kind is bool:
        group.add_argument(flag, action="store_true", default=f.default, help=help)
        if f.default:
            group.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", default=argparse.SUPPRESS,
                               help=f"turn {flag} off")
    else:
        group.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"), help=help)


def build_parser(description: str, buckets: tuple[Bucket, ...]) -> argparse.ArgumentParser:
    from wan.training.config import GROUPS, TrainConfig

    usage = ("%(prog)s --pretrained_model_name_or_path DIR --pretrained_wav2vec_path DIR "
             + " ".join(f"--train_data_{b.name}_dir LIST" for b in buckets) + " --output_dir DIR [options]")
    p = argparse.ArgumentParser(description=description, usage=usage, formatter_class=_HelpFormatter)
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    hints = typing.get_type_hints(TrainConfig)
    for f in TrainConfig.flag_fields():
        _add_field(groups[f.metadata["group"]], f, hints[f.name])

    g = groups[GROUPS[0]]
    for b in buckets:
        g.add_argument(f"--train_data_{b.name}_dir", required=True,
                       help=f"the {b.list_file} list of clip folders ({b.width}x{b.height} clips)")
    g.add_argument("--bucket_sizes", nargs="+", type=parse_size, default=None,
                   help="(ours) WIDTHxHEIGHT per bucket; none given: " + " ".join(f"{b.width}x{b.height}" for b in buckets))
    groups["optimisation"].add_argument("--use_deepspeed", action="store_true",
                                        help="the original's DeepSpeed switch; here DeepSpeed runs when "
                                             "--deepspeed_config is given, which this flag requires")

    g = p.add_argument_group(COMPAT_GROUP)
    for flag, kw in COMPAT_FLAGS.items():
        g.add_argument(flag, **{"help": "no effect", **kw})
    return p


def run(args: argparse.Namespace, buckets: tuple[Bucket, ...]) -> list[float]:
    """Build the TrainConfig from the flags and train; returns the per-step losses of this process."""
    from wan.training.trainer import Trainer

    return Trainer(config_from_args(args, buckets)).train()


def config_from_args(args: argparse.Namespace, buckets: tuple[Bucket, ...]):
    """The TrainConfig of a command line (user errors are ValueErrors naming the flag)."""
    from wan.training.config import TrainConfig

    if args.use_deepspeed and not args.deepspeed_config:
        raise ValueError("--use_deepspeed needs --deepspeed_config deepspeed_config/zero_stage2_config.json (or zero3)")
    if args.train_mode == "normal":
        raise ValueError("--train_mode normal is not supported (the original crashes on it); use i2v")
    sizes = args.bucket_sizes or [(b.width, b.height) for b in buckets]
    if len(sizes) != len(buckets):
        raise ValueError(f"--bucket_sizes needs {len(buckets)} sizes ({[b.name for b in buckets]}), got {len(sizes)}")
    return TrainConfig.from_args(
        args,
        train_lists=tuple(getattr(args, f"train_data_{b.name}_dir") for b in buckets),
        buckets=tuple(sizes), bucket_names=tuple(b.name for b in buckets),
        validation_size=tuple(sizes[-1]),  # the original validates rec_vec at 480x832 (portrait), square at 512x512
        report_to=None if args.report_to in (None, "none") else args.report_to,
    )
