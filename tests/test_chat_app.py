"""app.py as a user meets it: the server started on a loopback port over the tiny export of tests/test_infer_chat.py,
driven through gradio_client (text, image, audio questions, a spoken answer, bad uploads) and loaded by headless
chromium. Answers of random tiny models are gibberish: the tests check the plumbing and that the page answers what
infer_chat.py answers for the same question and media (one prompt/generation path)."""

import os
import shutil
import socket
import subprocess
import sys
import time

import gradio_client
import pytest
import soundfile as sf

from tests.conftest import REPO
from tests.test_infer_chat import chat, ok, tiny  # noqa: F401 (tiny: the shared tiny-model fixture)

TITLE = "omni: chat with the tiny omni model"  # app.TITLE (not imported: that would import gradio here)
START_TIMEOUT_S = 90  # bounded wait for the server; gradio's import alone takes seconds on a slow CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):  # noqa: F811 (the imported fixture, requested by name)
    """app.py on the tiny export at http://127.0.0.1:PORT, stopped at the end of the module."""
    root, _ = tiny
    logs = tmp_path_factory.mktemp("app") / "server.log"
    url = f"http://127.0.0.1:{free_port()}"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with open(logs, "w") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model_dir", str(root / "merged"),
                                 "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--device", "cpu"],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while url not in logs.read_text():
            assert proc.poll() is None, f"app.py exited {proc.returncode}:\n{logs.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"app.py not up in {START_TIMEOUT_S} s:\n{logs.read_text()[-3000:]}"
            time.sleep(0.2)
        client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("dl")),
                                      analytics_enabled=False)
        yield url, client, root, logs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ask(client, question, *, image=None, audio=None, ocr=None, speak=False, vocoder="griffin-lim"):
    """One turn of a new conversation -> (chat display, speech file or None, status line)."""
    client.predict(api_name="/clear")
    wrap = gradio_client.handle_file
    history, _, speech, status = client.predict(
        question, wrap(str(image)) if image else None, wrap(str(audio)) if audio else None,
        wrap(str(ocr)) if ocr else None, speak, vocoder, 0.0, 8, api_name="/respond")
    return history, speech, status


def answer_of(history) -> str:
    last = history[-1]
    assert last["role"] == "assistant"
    content = last["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content if isinstance(p, dict))


def test_questions_with_text_image_audio_and_ocr_are_answered_as_infer_chat_answers(server):
    _, client, root, _ = server
    history, speech, status = ask(client, "Hi")
    assert speech is None and status.startswith("Answered") and answer_of(history)
    history, _, status = ask(client, "What colour is the circle?", image=root / "circle.png")
    assert status.startswith("Answered"), status
    assert len(history) == 3  # the image, the question, the answer
    cli = ok(chat("--model_dir", root / "merged", "--image", root / "circle.png", "--text",
                  "What colour is the circle?"))
    assert answer_of(history) == cli[0]  # the same prompt, model and greedy decoding as the CLI
    for media in ({"audio": root / "tone.wav"}, {"ocr": root / "line.png"}):
        history, _, status = ask(client, "What is it?", **media)
        assert status.startswith("Answered") and answer_of(history), (media, status)


@pytest.mark.parametrize("vocoder", ["hifigan", "griffin-lim"])
def test_spoken_answer_is_a_decodable_16khz_wav(server, vocoder):
    _, client, _, _ = server
    _, speech, status = ask(client, "Say hello.", speak=True, vocoder=vocoder)
    assert f"spoken with {vocoder}" in status, status
    wav, rate = sf.read(speech)
    assert rate == 16000 and wav.ndim == 1 and len(wav) > 0


def test_bad_uploads_are_answered_with_a_message_and_no_traceback(server, tmp_path):
    _, client, root, logs = server
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is no image")
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt nothing here")
    for upload, named in (({"image": tmp_path / "broken.png"}, "cannot read image"),
                          ({"audio": tmp_path / "broken.wav"}, "cannot read audio"),
                          ({"ocr": tmp_path / "broken.png"}, "cannot read image")):
        history, speech, status = ask(client, "What is it?", **upload)
        assert status.startswith("**Error:**") and named in status, status
        assert history == [] and speech is None  # the conversation is left as it was
    assert "Traceback" not in logs.read_text()
    history, _, status = ask(client, "And now?", image=root / "circle.png")  # the app still answers
    assert status.startswith("Answered")


def test_headless_chromium_loads_the_chat_page(server, tmp_path):
    url, _, _, _ = server
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "no chromium on PATH: `make setup` installs it (apt-get install chromium)"
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # Rendered by the page's JavaScript (the served HTML has only the config): the question box, the microphone.
    for markup in (TITLE, '<textarea data-testid="textbox"', 'aria-label="Record audio"'):
        assert markup in dom.stdout, markup
