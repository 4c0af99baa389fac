"""Screenshot of a real exchange in the browser chat (docs/chat_app.png): headless chromium opens a running app.py,
uploads an image, asks about it (spoken answer on), waits for the answer and saves the page.

    python app.py &                                                     # the demo export on http://127.0.0.1:7860
    python scripts/chat_screenshot.py --image data/images/imgs/val_000006.png --question "What colour is the circle?"

Needs playwright's Python package (`pip install playwright`, not pinned: only this docs helper uses it); it drives
the system's chromium (`make setup` installs it), so no browser is downloaded.
"""

import argparse
import shutil

from playwright.sync_api import sync_playwright

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--url", default="http://127.0.0.1:7860")
parser.add_argument("--image", required=True)
parser.add_argument("--question", default="What colour is the circle?")
parser.add_argument("--out", default="docs/chat_app.png")
parser.add_argument("--width", type=int, default=1200)
parser.add_argument("--height", type=int, default=980)
args = parser.parse_args()

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": args.width, "height": args.height})
    page.goto(args.url)
    page.wait_for_selector("textarea")
    page.locator("input[type=file]").first.set_input_files(args.image)  # the Image box is the first upload
    page.get_by_label("Speak the answer").check()
    page.locator("textarea").first.fill(args.question)
    page.get_by_role("button", name="Send", exact=True).click()
    page.get_by_text("Answered by").wait_for(timeout=120_000)
    page.wait_for_timeout(1000)  # let the spoken answer's waveform draw
    page.screenshot(path=args.out)
    browser.close()
print(f"wrote {args.out}")
