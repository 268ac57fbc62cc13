"""Screenshots of each tab of `bld serve`, and the time of Generate clicks, in a real browser.

    python3 scripts/screenshots.py RUN_DIR [--out docs] [--clicks 3]

Starts `bld serve RUN_DIR` on a free loopback port, drives Debian's chromium headless
(tests/webcheck.py), clicks Generate at the page's defaults (10 images, 16 steps) --clicks
times, paints a mask and inpaints, runs the trajectory and a blend, and writes
OUT/app_sample.png, OUT/app_inpaint.png, OUT/app_bits.png and OUT/app_timing.json (each
click's seconds from the click to the new image in the page).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]  # bld, and the browser driver webcheck

from bld.demo import cpu_name  # noqa: E402
from webcheck import browser_page, click_and_time, not_blank, paint, running_server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--clicks", type=int, default=3, help="Generate clicks to time")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = []
    with running_server(args.run_dir, log_path=out / ".serve.log") as url, \
            browser_page(1280, 900) as page:
        page.goto(url)
        page.wait_for_selector("#generate", timeout=60_000)
        for i in range(args.clicks):
            grid, seconds = click_and_time(page, "#generate", "#sample-output")
            timings.append(seconds)
            print(f"Generate click {i + 1}: {seconds:.2f} s ({not_blank(grid)[1]})")
            if i + 1 < args.clicks:  # a new seed, so the page shows a new image
                page.get_by_label("seed").first.fill(str(i + 1))
        info = page.inner_text("#sample-info")
        page.screenshot(path=str(out / "app_sample.png"), full_page=True)

        page.get_by_role("tab", name="Inpaint").click()
        paint(page, "#inpaint-editor", [(0.15, 0.62, 0.85, 0.62), (0.85, 0.8, 0.15, 0.8)])
        click_and_time(page, "#inpaint", "#inpaint-output")
        time.sleep(0.5)
        page.screenshot(path=str(out / "app_inpaint.png"), full_page=True)

        page.get_by_role("tab", name="Inside the bits").click()
        click_and_time(page, "#trajectory", "#trajectory-output")
        click_and_time(page, "#blend", "#blend-output")
        time.sleep(0.5)
        page.screenshot(path=str(out / "app_bits.png"), full_page=True)
    report = {"run_dir": str(args.run_dir), "generate_click_seconds": timings,
              "page_says": info, "what": "seconds from the Generate click to the new image "
              "in the page, at the page's defaults (10 images, 16 steps)",
              "machine": f"{cpu_name()}, {os.cpu_count()} CPUs"}
    (out / "app_timing.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / ".serve.log").unlink(missing_ok=True)
    print(f"wrote {out}/app_sample.png, app_inpaint.png, app_bits.png, app_timing.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
