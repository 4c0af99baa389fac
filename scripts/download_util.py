"""Resumable-enough downloads for the dataset scripts: a .part file renamed when complete, progress in MB, and a
clear message (not a traceback) when the network fails."""

import urllib.error
import urllib.request
from pathlib import Path


def download(url: str, target: Path) -> None:
    """url -> target via target.part, printing progress."""
    part = target.with_name(target.name + ".part")
    print(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
            total = int(response.headers.get("Content-Length", 0))
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if total:
                    print(f"\r  {done / 1e6:,.0f} / {total / 1e6:,.0f} MB", end="", flush=True)
        print()
    except (urllib.error.URLError, OSError) as e:
        raise SystemExit(f"could not download {url}: {e}\nCheck your internet connection (or proxy settings) and "
                         "rerun; the partial file is discarded.") from None
    if total and part.stat().st_size != total:
        raise SystemExit(f"{url}: got {part.stat().st_size} of {total} bytes; rerun to download it again")
    part.replace(target)
