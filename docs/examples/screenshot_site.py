"""Screenshots of the built documentation site at a given width, to check by eye that code,
equations and plot labels are legible (1280 px by default, a laptop screen).

    mkdocs build --strict -f docs/mkdocs/mkdocs.yml          # -> site/
    python docs/examples/screenshot_site.py site ttt notebooks/08_what_each_idea_buys --out shots

Needs a Chromium (Debian: ``apt install chromium``). The site is served from a local HTTP server
for the time of the shots, so MathJax (served with the site) renders as it does for a reader.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import threading
from pathlib import Path


def screenshot(site: Path, pages: list[str], out: Path, width: int = 1280, height: int = 2400) -> list[Path]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no Chromium found: apt install chromium")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out.mkdir(parents=True, exist_ok=True)
    shots = []
    try:
        for page in pages:
            shot = out / f"{page.strip('/').replace('/', '_') or 'index'}.png"
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--window-size={width},{height}", "--virtual-time-budget=10000",
                            f"--screenshot={shot}", f"http://127.0.0.1:{server.server_port}/{page.strip('/')}/"],
                           check=True, capture_output=True, timeout=120)
            shots.append(shot)
    finally:
        server.shutdown()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the built site (mkdocs build -d DIR)")
    parser.add_argument("pages", nargs="+", help="page paths, e.g. ttt notebooks/06_end_to_end")
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args(argv)
    for shot in screenshot(args.site, args.pages, args.out, args.width):
        print(shot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
