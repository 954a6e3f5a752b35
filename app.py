"""Web UI (Gradio): talking-avatar videos, audio extraction and vocal separation in the browser.

    python app.py                                   # weights in checkpoints/ (as the original's app.py)
    python app.py --pretrained_model_name_or_path ... --transformer_path ... --pretrained_wav2vec_path ... \
        --server_name 0.0.0.0 --server_port 7860

Takes inference.py's model flags (weights, --device, --dtype, --GPU_memory_mode, --fast, ...). The weight files are
checked and the models loaded ONCE at start, before the server listens (as the original, which loads at import);
every request reuses them. The memory mode is a model-level setting: the page offers it, and choosing another one
reloads the models on the next request (the old ones are freed first); on the CPU only model_full_load exists.
Requests run one at a time through Gradio's queue (the heavy jobs, generation and vocal separation, share it); each
writes into its own folder `<output_dir>/<time>-<id>/` (video.mp4 with the driving audio, video_without_audio.mp4;
audio.wav; vocal.wav). A wrong input is shown in the page as an error message; the app keeps running.

Tabs: "Generate" (reference image, audio, prompt; the size preselected from the image's aspect among the three
trained buckets 512x512, 480x832 portrait, 832x480 landscape — any WxH multiple of 16 can be typed; steps,
guidance, overlap, seed with -1 = random; progress per denoising step), "Audio extraction" (video -> wav, as
audio_extractor.py) and "Vocal separation" (as vocal_seperator.py; needs --vocal_model, Kim_Vocal_2.onnx).

Scripts call the generate button's function as the API endpoint /generate (inputs in the order of the form, output:
the mp4's path):

    from gradio_client import Client, handle_file
    video = Client("http://127.0.0.1:7860/").predict(handle_file("ref.png"), handle_file("speech.wav"),
                                                       "A woman is speaking", "512x512", api_name="/generate")

Needs gradio: pip install -e '.[app]'.
"""

from __future__ import annotations

import argparse
import copy
import gc
import html
import logging
import math
import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path

from wan.configs import MEMORY_MODES
from wan.data.media import BUCKETS
from wan.runner import (
    DEFAULTS, Request, add_model_arguments, check_model_flags, check_request, check_weights, load_pipeline,
    log_environment, render, resolve_device,
)

log = logging.getLogger("stableavatar")
ROOT = Path(__file__).resolve().parent
EXAMPLE = ROOT / "examples" / "case-2"
VOCAL_MODEL_HELP = ("Kim_Vocal_2.onnx (an MDX-Net vocal model) sits at the top of "
                    "https://huggingface.co/FrancisRing/StableAvatar; get it with\n"
                    "    hf download FrancisRing/StableAvatar --include Kim_Vocal_2.onnx --local-dir checkpoints\n"
                    "and start the app with --vocal_model checkpoints/Kim_Vocal_2.onnx (the default path)")
# the trained buckets as the size menu shows them: label -> "WxH"
SIZE_CHOICES = [(f"{w}x{h} ({label})", f"{w}x{h}") for label, (w, h) in
                (("square", BUCKETS["square"]), ("portrait", BUCKETS["vec"]), ("landscape", BUCKETS["rec"]))]


# ------------------------------------------------------------------------------------------------ pure logic


def parse_size(size: str) -> tuple[int, int]:
    """"480x832" -> (480, 832) (width, height)."""
    try:
        w, h = (int(v) for v in str(size).lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"size {size!r} is not WIDTHxHEIGHT (e.g. 480x832 for portrait)") from None
    return w, h


def bucket_for(width: int, height: int) -> str:
    """The trained bucket ("WxH") whose aspect ratio is closest to an image's (in log ratio: 2:1 and 1:2 are as far
    from square)."""
    return min((f"{w}x{h}" for w, h in BUCKETS.values()),
               key=lambda s: abs(math.log(width / height) - math.log(parse_size(s)[0] / parse_size(s)[1])))


def bucket_for_image(path: str | None) -> str | None:
    if not path:
        return None
    from PIL import Image

    with Image.open(path) as im:
        return bucket_for(*im.size)


def new_output_dir(root: str | os.PathLike) -> Path:
    """A fresh folder name under `root` for one request (not created here)."""
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


class Models:
    """The pipeline, loaded once and reused by every request. A request with another memory mode reloads it (the
    old one is freed first); the lock keeps two callers from loading at once."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.pipe = None
        self.mode = None
        self._lock = threading.Lock()

    def settings(self, memory_mode: str):
        """(args, device, dtype) for `memory_mode`, or a ValueError saying why it cannot run here."""
        if memory_mode not in MEMORY_MODES:
            raise ValueError(f"unknown memory mode {memory_mode!r}; choose one of {', '.join(MEMORY_MODES)}")
        args = copy.copy(self.args)
        args.GPU_memory_mode = memory_mode
        check_model_flags(args, parallel=False)
        device, dtype = resolve_device(args)
        return args, device, dtype

    def get(self, memory_mode: str):
        """(pipe, args, device, dtype) with the models in `memory_mode`, loading them if needed."""
        args, device, dtype = self.settings(memory_mode)
        with self._lock:
            if self.pipe is None or self.mode != memory_mode:
                if self.pipe is not None:
                    log.info("memory mode %s -> %s: reloading the models", self.mode, memory_mode)
                    self.pipe = None
                    gc.collect()
                    if device.type == "cuda":
                        import torch

                        torch.cuda.empty_cache()
                t0 = time.perf_counter()
                self.pipe, self.mode = load_pipeline(args, device, dtype), memory_mode
                log.info("models loaded in %.1f s (memory mode %s)", time.perf_counter() - t0, memory_mode)
            return self.pipe, args, device, dtype


def generate(models: Models, reference: str | None, audio: str | None, prompt: str, size: str, steps: int,
             text_guide_scale: float, audio_guide_scale: float, overlap: int, seed: int, negative_prompt: str,
             clip_frames: int, scheme: str, memory_mode: str, on_step=None, on_stage=None) -> dict:
    """One video into a new folder under --output_dir; returns render()'s timings plus `seed` and `output_dir`.
    `on_step(done, total)` after every denoising step, `on_stage(text)` before the slow stages."""
    stage = on_stage or (lambda text: None)
    if not reference:
        raise ValueError("upload a reference image")
    if not audio:
        raise ValueError("upload the driving audio")
    width, height = parse_size(size)
    seed = int(seed)
    if seed == -1:
        seed = random.randrange(2**31)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, or -1 for a random one (got {seed})")
    req = Request(reference=reference, audio=audio, prompt=prompt or "", output_dir=str(new_output_dir(
                  models.args.output_dir)), negative_prompt=negative_prompt, width=width, height=height, seed=seed,
                  steps=int(steps), text_guide_scale=float(text_guide_scale),
                  audio_guide_scale=float(audio_guide_scale), overlap=int(overlap), scheme=scheme,
                  clip_length=int(clip_frames))
    # 1. every check that needs no model
    audio_16k, plan = check_request(req)
    models.settings(memory_mode)
    log.info("request %s: %dx%d, seed %d, %s", req.output_dir, width, height, seed, plan.describe(req.steps))
    # 2. the models (loaded at start; reloaded only for another memory mode)
    if models.mode != memory_mode:
        stage(f"loading the models ({memory_mode})")
    pipe, args, device, dtype = models.get(memory_mode)
    # 3. generate and write

    def step_done(done: int, latents) -> None:
        if on_step is not None:
            on_step(done, req.steps)
        if done == req.steps:
            stage("decoding and writing the mp4")

    stage("encoding the prompt, the image and the audio")
    tm = render(pipe, req, audio_16k, args, device=device, dtype=dtype, on_step=step_done)
    tm.update(seed=seed, output_dir=req.output_dir, width=width, height=height, steps=req.steps)
    return tm


def describe(tm: dict | None) -> str:
    """The result line under the video."""
    if not tm:
        return ""
    return (f"{tm['frames']} frames, {tm['width']}x{tm['height']}, {tm['steps']} steps, seed {tm['seed']}; "
            f"denoising {tm.get('denoise_s', 0):.1f} s, in all {tm['render_s']:.1f} s; saved in `{tm['output_dir']}`")


def extract_audio(video: str | None, output_root: str) -> str:
    """The video's audio track as 16-bit PCM WAV (audio_extractor.py) in a new folder; returns its path."""
    from wan.data.media import extract_audio as extract

    if not video:
        raise ValueError("upload a video")
    return str(extract(video, new_output_dir(output_root) / "audio.wav"))


def separate_vocals(audio: str | None, model_path: str, output_root: str) -> str:
    """The vocal stem (vocal_seperator.py) in a new folder; returns its path."""
    if not Path(model_path).is_file():
        raise ValueError(f"the vocal model {model_path} does not exist. {VOCAL_MODEL_HELP}")
    if not audio:
        raise ValueError("upload an audio file")
    from wan.data.vocals import separate_file

    return str(separate_file(model_path, audio, new_output_dir(output_root) / "vocal.wav", progress=False))


# ------------------------------------------------------------------------------------------------ the page


def is_user_error(e: Exception) -> bool:
    """A wrong input, flag or weight file: its message says what to fix (anything else is a bug)."""
    from wan.checkpoints import CheckpointError

    return isinstance(e, (ValueError, FileNotFoundError, ImportError, CheckpointError))


def _user_error(e: Exception):
    """The exception as a message in the page (never a traceback); unexpected ones are logged with theirs."""
    import gradio as gr

    if is_user_error(e):
        text = str(e)
    else:
        log.exception("request failed")
        text = f"internal error ({type(e).__name__}: {e}); the server's log has the details"
    return gr.Error(html.escape(text).replace("\n", "<br>"), duration=None, print_exception=False)


def build_app(args: argparse.Namespace, models: Models):
    """The Blocks of the page; `models` serves the requests (loaded or not: it loads on the first request)."""
    import gradio as gr

    cpu_only = args.device == "cpu" or (args.device == "auto" and not _cuda_available())
    with gr.Blocks(title="StableAvatar", analytics_enabled=False) as demo:
        gr.Markdown("# StableAvatar\nAudio-driven talking-avatar video of any length from one image "
                    "(Wan2.1-Fun-1.3B-InP + StableAvatar's audio adapter).")
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column():
                        reference = gr.Image(label="Reference image", type="filepath", image_mode=None,
                                             sources=["upload", "clipboard"], elem_id="reference")
                        audio = gr.Audio(label="Driving audio (its length sets the video's)", type="filepath",
                                         sources=["upload", "microphone"], elem_id="audio")
                        prompt = gr.Textbox(label="Prompt", placeholder="e.g. A woman is speaking to the camera",
                                            elem_id="prompt")
                        with gr.Accordion("Settings", open=True):
                            size = gr.Dropdown(SIZE_CHOICES, value=f"{DEFAULTS.width}x{DEFAULTS.height}",
                                               label="Size (width x height)", allow_custom_value=True,
                                               info="the trained sizes; chosen from the image's aspect on upload; "
                                                    "another WxH (multiples of 16) can be typed",
                                               elem_id="size")
                            steps = gr.Slider(1, 100, value=DEFAULTS.sample_steps, step=1, label="Denoising steps",
                                              info="the authors recommend 30-50", elem_id="steps")
                            text_scale = gr.Slider(1.0, 10.0, value=DEFAULTS.text_guide_scale, step=0.1,
                                                   label="Text guidance")
                            audio_scale = gr.Slider(1.0, 10.0, value=DEFAULTS.audio_guide_scale, step=0.1,
                                                    label="Audio guidance")
                            overlap = gr.Slider(2, 20, value=DEFAULTS.overlap_window_length, step=1,
                                                label="Window overlap (latent frames)")
                            seed = gr.Number(value=DEFAULTS.seed, precision=0, label="Seed (-1: random)")
                        with gr.Accordion("More settings", open=False):
                            negative = gr.Textbox(value=DEFAULTS.negative_prompt, label="Negative prompt", lines=2)
                            clip_frames = gr.Slider(5, 321, value=DEFAULTS.clip_sample_n_frames, step=4,
                                                    label="Video frames per window (4k+1)")
                            scheme = gr.Radio(["uniform", "log"], value=DEFAULTS.overlapping_weight_scheme,
                                              label="Overlap cross-fade")
                        with gr.Accordion("Model", open=False):
                            memory_mode = gr.Dropdown(
                                list(MEMORY_MODES), value=args.GPU_memory_mode, label="GPU memory mode",
                                interactive=not cpu_only,
                                info="on the CPU the models stay in memory (model_full_load)" if cpu_only else
                                     "another mode reloads the models on the next request (README: GPU memory modes)")
                            gr.Markdown(_model_summary(args))
                        run = gr.Button("Generate", variant="primary", elem_id="generate")
                    with gr.Column():
                        video = gr.Video(label="Video", interactive=False, elem_id="result")
                        info = gr.Markdown(elem_id="info")
                if EXAMPLE.is_dir():
                    gr.Examples([[str(EXAMPLE / "reference.png"), str(EXAMPLE / "audio.wav"),
                                  (EXAMPLE / "prompt.txt").read_text().strip(), "512x512"]],
                                [reference, audio, prompt, size], label="Example (a 40 s speech)")
            with gr.Tab("Audio extraction", id="extract"):
                gr.Markdown("The audio track of a video as 16-bit PCM WAV (what `audio_extractor.py` writes).")
                with gr.Row():
                    source_video = gr.Video(label="Video", sources=["upload"], elem_id="extract_video")
                    with gr.Column():
                        extracted = gr.Audio(label="Audio", type="filepath", interactive=False)
                        use_extracted = gr.Button("Use as driving audio")
                extract_btn = gr.Button("Extract", variant="primary")
            with gr.Tab("Vocal separation", id="vocals"):
                gr.Markdown("The vocals of a song or a noisy recording (what `vocal_seperator.py` writes), to drive "
                            "the avatar with the voice alone.")
                if not Path(args.vocal_model).is_file():
                    gr.Markdown(f"**The vocal model `{args.vocal_model}` is missing.** "
                                + html.escape(VOCAL_MODEL_HELP).replace("\n    ", "\n\n    ").replace("\n", "<br>"))
                with gr.Row():
                    mix = gr.Audio(label="Audio", type="filepath", sources=["upload"])
                    with gr.Column():
                        vocals = gr.Audio(label="Vocals", type="filepath", interactive=False)
                        use_vocals = gr.Button("Use as driving audio")
                separate_btn = gr.Button("Separate", variant="primary")

        last = gr.State()  # the timings of the last video (a State: not part of the API's output)
        form = [reference, audio, prompt, size, steps, text_scale, audio_scale, overlap, seed, negative,
                clip_frames, scheme, memory_mode]

        def on_generate(reference, audio, prompt, size, steps, text_guide_scale, audio_guide_scale, overlap, seed,
                        negative_prompt, clip_frames, scheme, memory_mode, progress=gr.Progress()):
            def step(done, total):
                progress((done, total), desc="denoising", unit="steps")

            try:
                tm = generate(models, reference, audio, prompt, size, steps, text_guide_scale, audio_guide_scale,
                              overlap, seed, negative_prompt, clip_frames, scheme, memory_mode, on_step=step,
                              on_stage=lambda text: progress(None, desc=text))
            except Exception as e:
                raise _user_error(e) from None
            return tm["paths"]["video"], tm

        gr.on([run.click, prompt.submit], on_generate, form, [video, last], api_name="generate",
              concurrency_id="model", concurrency_limit=1).success(describe, last, info, api_visibility="private",
                                                                   queue=False)
        reference.upload(bucket_for_image, reference, size, api_visibility="private", queue=False)

        def on_extract(video):
            try:
                return extract_audio(video, args.output_dir)
            except Exception as e:
                raise _user_error(e) from None

        def on_separate(audio):
            try:
                return separate_vocals(audio, args.vocal_model, args.output_dir)
            except Exception as e:
                raise _user_error(e) from None

        extract_btn.click(on_extract, source_video, extracted, api_name="extract_audio")
        separate_btn.click(on_separate, mix, vocals, api_name="separate_vocals", concurrency_id="model",
                           concurrency_limit=1)
        for button, result in ((use_extracted, extracted), (use_vocals, vocals)):
            button.click(lambda path: (path, gr.Tabs(selected="generate")), result, [audio, tabs],
                         api_visibility="private", queue=False)
    return demo


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _model_summary(args: argparse.Namespace) -> str:
    speed = [f for f in ("fast", "fp8", "enable_teacache") if getattr(args, f)]
    return (f"Weights: `{args.pretrained_model_name_or_path}`, DiT `{args.transformer_path}`"
            + (f", LoRA `{args.lora_path}`" if args.lora_path else "")
            + f", wav2vec2 `{args.pretrained_wav2vec_path}`; spec `{args.model_spec}`, device `{args.device}`, "
              f"dtype `{args.dtype}`" + (f"; {', '.join('--' + f for f in speed)}" if speed else "")
            + ". These are launch flags (`python app.py --help`).")


# ------------------------------------------------------------------------------------------------ script


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        import gradio
    except ImportError:
        raise ImportError("the web app needs gradio: pip install -e '.[app]'") from None
    # 1. every check that needs no model, then the models, once (before the server listens)
    check_model_flags(args, parallel=False)
    check_weights(args)
    models = Models(args)
    _, device, dtype = models.settings(args.GPU_memory_mode)
    log_environment(device, dtype, args)
    models.get(args.GPU_memory_mode)
    # 2. the page; one request at a time
    demo = build_app(args, models)
    demo.queue(default_concurrency_limit=1)
    allowed = [str(Path(args.output_dir).resolve())] + ([str(EXAMPLE)] if EXAMPLE.is_dir() else [])
    log.info("gradio %s: serving on http://%s:%d (requests write into %s)", gradio.__version__, args.server_name,
             args.server_port, args.output_dir)
    demo.launch(server_name=args.server_name, server_port=args.server_port, share=args.share, allowed_paths=allowed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    add_model_arguments(p, required=False)
    g = p.add_argument_group("app")
    g.add_argument("--output_dir", default="outputs/app", help="every request writes into a new folder under it")
    g.add_argument("--vocal_model", default="checkpoints/Kim_Vocal_2.onnx",
                   help="the MDX-Net vocal model for the vocal separation tab")
    g.add_argument("--server_name", default="127.0.0.1", help="0.0.0.0 serves the local network")
    g.add_argument("--server_port", type=int, default=7860, help="the port to serve on")
    g.add_argument("--share", action="store_true", help="a temporary public gradio.live link")
    # every request has its own folder: a render state would never be resumed; --enable_teacache's cache is built
    # for the default steps, render() sets each request's
    p.set_defaults(no_resume=True, sample_steps=DEFAULTS.sample_steps)
    return p


def cli(argv: list[str] | None = None) -> int:
    """One `error:` line (exit 1) for a user or weight error at start; STABLEAVATAR_DEBUG=1 shows tracebacks."""
    args = build_parser().parse_args(argv)
    try:
        return main(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if os.environ.get("STABLEAVATAR_DEBUG") or not is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
