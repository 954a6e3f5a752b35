"""The web app (app.py) on the tiny tree: served by `python app.py` in a subprocess, called with gradio_client like a
script would, and driven in a real headless browser (Debian's chromium + chromedriver, through selenium).

The browser test needs `chromium`, `chromedriver` and selenium; `.ci/run` installs them (apt-get install chromium
chromium-driver; selenium comes with the test extra). Elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
from conftest import free_port
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "examples" / "case-2" / "audio.wav"
IMAGE = ROOT / "examples" / "case-1" / "reference.png"
LOCAL = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}  # never through a proxy


def speech(seconds: float, path: Path) -> Path:
    y, sr = sf.read(SPEECH, dtype="int16", always_2d=True)
    sf.write(path, y[:int(seconds * sr)], sr, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py` on the tiny tree: (url, output folder, log file); stopped after the module's tests."""
    pytest.importorskip("gradio", reason="the web app needs gradio: pip install -e '.[app]'")
    pytest.importorskip("gradio_client", reason="the API test needs gradio_client (comes with gradio)")
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    tmp = tmp_path_factory.mktemp("app")
    tree = write_tiny_checkpoints(tmp / "ckpt", "tiny", seed=0)
    port, out, log = free_port(), tmp / "outputs", tmp / "server.log"
    cmd = [sys.executable, str(ROOT / "app.py"), "--model_spec=tiny", "--device=cpu",
           f"--pretrained_model_name_or_path={tree / 'Wan2.1-Fun-V1.1-1.3B-InP'}",
           f"--transformer_path={tree / 'StableAvatar-1.3B' / 'transformer3d-square.pt'}",
           f"--pretrained_wav2vec_path={tree / 'wav2vec2-base-960h'}", f"--output_dir={out}",
           f"--vocal_model={tmp / 'missing' / 'Kim_Vocal_2.onnx'}", f"--server_port={port}"]
    env = {**os.environ, **LOCAL, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=tmp, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"app.py did not serve within 180 s:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url, out, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def local_env(monkeypatch):
    for k, v in LOCAL.items():
        monkeypatch.setenv(k, v)


def folders(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()} if out.exists() else set()


def test_api_generate_extract_and_errors(server, tmp_path, local_env):
    """/generate as a script calls it: a wrong size is an error message (and no folder), then a video with the
    driving audio in its own folder, with per-step progress; /extract_audio gives its audio back as a wav; a missing
    vocal model names the download command; the app serves on after every error."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from wan.io.video import probe
    from wan.sliding_window import plan_video

    url, out, log = server
    audio = speech(2.0, tmp_path / "speech.wav")
    client = Client(url, verbose=False)
    before = folders(out)
    with pytest.raises(AppError, match="multiples of 16"):
        client.predict(handle_file(str(IMAGE)), handle_file(str(audio)), "A woman is speaking", "100x96",
                       api_name="/generate")
    with pytest.raises(AppError, match="upload a reference image"):
        client.predict(None, handle_file(str(audio)), "A woman is speaking", "128x96", api_name="/generate")
    assert folders(out) == before

    steps = 10
    job = client.submit(handle_file(str(IMAGE)), handle_file(str(audio)), "A woman is speaking", "128x96", steps,
                        3.0, 5.0, 3, 7, "", 17, "uniform", "model_full_load", api_name="/generate")
    seen = set()
    while not job.done():
        for p in job.status().progress_data or []:
            seen.add((p.desc, p.index, p.length))
        time.sleep(0.02)
    video = job.result()
    denoising = {index for desc, index, total in seen if desc == "denoising" and total == steps}
    assert denoising and denoising <= set(range(1, steps + 1)), seen  # polled: not every step is seen
    assert ("decoding and writing the mp4", None, None) in seen, seen
    assert "Traceback" not in log.read_text()

    info = probe(video)
    n = len(sf.read(audio)[0]) * 16000 // sf.info(audio).samplerate
    assert (info.width, info.height, info.num_frames) == (128, 96, plan_video(n, 17, 3).num_decoded_frames)
    assert info.has_audio and info.audio_sample_rate == 16000 and info.audio_duration == pytest.approx(
        info.duration, abs=0.05)
    (new,) = folders(out) - before  # one folder for the request, holding the video that came back
    assert (out / new / "video.mp4").read_bytes() == Path(video).read_bytes()

    wav = client.predict(handle_file(video), api_name="/extract_audio")
    y, sr = sf.read(wav)
    assert sr == 44100 and len(y) / sr == pytest.approx(info.audio_duration, abs=0.05) and np.abs(y).max() > 0
    with pytest.raises(AppError, match="hf download FrancisRing/StableAvatar --include Kim_Vocal_2.onnx"):
        client.predict(handle_file(str(audio)), api_name="/separate_vocals")
    with pytest.raises(AppError, match="model_cpu_offload needs a CUDA device"):
        client.predict(handle_file(str(IMAGE)), handle_file(str(audio)), "", "128x96", 1, 3.0, 5.0, 3, 7, "", 17,
                       "uniform", "model_cpu_offload", api_name="/generate")
    assert client.predict(handle_file(str(IMAGE)), handle_file(str(audio)), "", "128x96", 1, 3.0, 5.0, 3, 7, "",
                          17, "uniform", "model_full_load", api_name="/generate").endswith(".mp4")
    assert log.read_text().count("models loaded in") == 1  # at start, then reused by every request


def test_models_loaded_once_and_reloaded_for_another_memory_mode(monkeypatch):
    import app

    loads = []
    import torch

    monkeypatch.setattr(app, "resolve_device", lambda args: (torch.device("cpu"), torch.float32))
    monkeypatch.setattr(app, "load_pipeline", lambda args, device, dtype: loads.append(args.GPU_memory_mode) or
                        object())
    args = app.build_parser().parse_args(["--GPU_memory_mode=model_full_load"])
    models = app.Models(args)
    first = models.get("model_full_load")[0]
    assert models.get("model_full_load")[0] is first and loads == ["model_full_load"]
    second, margs, _, _ = models.get("model_cpu_offload")
    assert second is not first and margs.GPU_memory_mode == "model_cpu_offload" and models.mode == "model_cpu_offload"
    assert loads == ["model_full_load", "model_cpu_offload"] and args.GPU_memory_mode == "model_full_load"
    with pytest.raises(ValueError, match="unknown memory mode 'fastest'"):
        models.get("fastest")


def test_size_from_the_image_aspect():
    import app

    assert [app.bucket_for(w, h) for w, h in ((790, 790), (1080, 1920), (1920, 1080), (1000, 1300), (1300, 1000))] \
        == ["512x512", "480x832", "832x480", "512x512", "512x512"]
    assert app.parse_size("832x480") == (832, 480)
    with pytest.raises(ValueError, match="not WIDTHxHEIGHT"):
        app.parse_size("832 by 480")


def browser():
    """A headless chromium driven by selenium, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (test extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("the browser test needs Debian's chromium and chromedriver (apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
              "--window-size=1400,2000", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_bin))


def test_page_in_a_browser(server, tmp_path, local_env):
    """A user's session: generate without inputs shows the error; a portrait image preselects 480x832; then a custom
    size, 2 steps, generate; the page's <video> loads and has the audio's duration."""
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from wan.sliding_window import plan_video

    url, out, _ = server
    portrait = tmp_path / "portrait.png"
    with Image.open(IMAGE) as im:
        im.crop((150, 0, 600, 790)).save(portrait)
    audio = speech(2.0, tmp_path / "speech.wav")
    driver = browser()
    try:
        wait = WebDriverWait(driver, 60)
        driver.set_script_timeout(30)
        driver.get(url)
        button = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#generate"))
        button.click()
        wait.until(lambda d: "upload a reference image" in d.find_element(By.TAG_NAME, "body").text)

        driver.find_element(By.CSS_SELECTOR, "#reference input[type=file]").send_keys(str(portrait))
        size = driver.find_element(By.CSS_SELECTOR, "#size input")
        wait.until(lambda d: "480x832" in size.get_attribute("value"))
        driver.find_element(By.CSS_SELECTOR, "#audio input[type=file]").send_keys(str(audio))
        size.click()
        size.send_keys(Keys.CONTROL, "a")
        size.send_keys("128x96", Keys.ENTER)
        steps = driver.find_element(By.CSS_SELECTOR, "#steps input[type=number]")
        steps.send_keys(Keys.CONTROL, "a")
        steps.send_keys("2", Keys.TAB)
        before = folders(out)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#audio audio, #audio [data-testid*=waveform]"))
        button.click()

        video = WebDriverWait(driver, 120).until(lambda d: d.find_element(By.CSS_SELECTOR, "#result video"))
        state = driver.execute_async_script("""
            const [v, done] = arguments;
            const report = () => done({ready: v.readyState, duration: v.duration, error: v.error && v.error.code,
                                       src: v.currentSrc});
            if (v.readyState >= 2) report();
            else { v.addEventListener('loadeddata', report); v.addEventListener('error', report); v.load(); }
        """, video)
        assert state["ready"] >= 2 and state["error"] is None, state
        n = len(sf.read(audio)[0]) * 16000 // sf.info(audio).samplerate
        assert state["duration"] == pytest.approx(plan_video(n, 81, 5).num_decoded_frames / 25, abs=0.05), state
        (new,) = folders(out) - before
        info = driver.find_element(By.CSS_SELECTOR, "#info").text
        assert "128x96, 2 steps" in info and new in info, info
    finally:
        driver.quit()
