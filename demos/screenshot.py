"""`python -m demos.screenshot`: launch the suite, generate once in a tab, save a PNG from headless Chromium.

Uses Debian's `chromium` (Playwright cannot download browsers offline):
    apt-get install chromium && python -m demos.screenshot --out docs/screenshot.png
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--out", default="docs/screenshot.png")
    parser.add_argument("--tab", default="elevator_pitch", help="Tab to show, by task slug.")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from demos.app import build_app
    from serving.engine import Engine, GenerationSettings
    from serving.models import load_model
    from tasks import get_task

    app = build_app(Engine(load_model(args.model)), defaults=GenerationSettings(max_new_tokens=80))
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    task = get_task(args.tab)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("tab", name=task.title).click()
            for field in task.fields:
                page.locator(f"#{task.slug}-{field.name} textarea, #{task.slug}-{field.name} input").first.fill(
                    task.examples[0][field.name])
            page.locator(f"#{task.slug}-generate").click()
            # The edit box is filled from the output once generation has finished.
            edit = page.locator(f"#{task.slug}-edit textarea")
            page.wait_for_function("el => el.value.length > 0", arg=edit.element_handle(), timeout=300_000)
            page.locator(f"#{task.slug}-flag label").first.click()
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        app.close()
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
