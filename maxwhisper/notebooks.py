"""Execute the notebook suite headless with papermill: `python -m maxwhisper.notebooks run`.

Executed copies go to `build/notebooks/` (git-ignored) with an HTML export beside each; the
committed notebooks stay without outputs. `--quick` is what CI runs: every step, shorter inputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .settings import REPO_ROOT, build_dir

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def execute(path: Path, quick: bool, out_dir: Path, html: bool = True) -> Path:
    """Run one notebook into out_dir (raises papermill's error on a failing cell)."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / path.name
    papermill.execute_notebook(str(path), str(target), parameters={"quick": quick},
                               kernel_name="python3", cwd=str(NOTEBOOK_DIR), progress_bar=False,
                               execution_timeout=1200,
                               log_output=False)
    if html:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_filename(str(target))
        target.with_suffix(".html").write_text(body, encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maxwhisper.notebooks")
    parser.add_argument("command", choices=["run"])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI parameters (default)")
    mode.add_argument("--full", action="store_true", help="the full parameters")
    parser.add_argument("names", nargs="*", help="notebook name prefixes, e.g. 01 04")
    args = parser.parse_intermixed_args(argv)
    out_dir = build_dir() / "notebooks"
    failed = []
    for path in notebooks():
        if args.names and not any(path.name.startswith(n) for n in args.names):
            continue
        start = time.perf_counter()
        try:
            execute(path, quick=not args.full, out_dir=out_dir)
            print(f"notebooks: {path.name} ok in {time.perf_counter() - start:.0f} s", flush=True)
        except Exception as error:  # papermill's error names the failing cell
            failed.append(path.name)
            print(f"notebooks: {path.name} FAILED: {str(error)[-2000:]}", file=sys.stderr)
    print(f"notebooks: executed copies and HTML in {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
