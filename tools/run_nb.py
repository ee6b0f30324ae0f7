"""Execute notebooks in place, *all* cells included (also those flagged `slow`/`gpu`), so that their
stored outputs come from a real run of the code they hold. Usage: python tools/run_nb.py nbs/02_metagrad.ipynb [...]
With `--slow 20,21` only the flagged cells with those indices run (besides every unflagged cell); the other flagged
cells keep the outputs they have, e.g. when they read run folders that are no longer at hand.
Run `nbdev_export` first (cells import the exported package) and `nbdev_clean` after."""
import os, re, sys, time
from pathlib import Path
from execnb.shell import CaptureShell

FLAGGED = re.compile(r"^\s*#\|\s*(slow|gpu)\s*$", re.M)

def run_nb(path, slow=None):
    "Run `path` in place; `slow`: indices of the flagged cells to run (default: all of them)."
    path = Path(path).resolve()
    cwd = os.getcwd()
    os.chdir(path.parent)  # nbdev_test runs each notebook from its own folder; do the same
    skip = lambda c: slow is not None and c.cell_type == "code" and bool(FLAGGED.search(c.source)) and c.idx_ not in slow
    try:
        t0 = time.time()
        CaptureShell().execute(path, path, exc_stop=True, preproc=skip)
        print(f"{path.name}: ran {'every cell' if slow is None else 'the unflagged cells and cells ' + str(sorted(slow))} in {time.time()-t0:.0f}s")
    finally: os.chdir(cwd)

if __name__ == "__main__":
    args, slow = sys.argv[1:], None
    if "--slow" in args:
        i = args.index("--slow")
        slow = {int(s) for s in args[i + 1].split(",")}
        del args[i:i + 2]
    for p in args: run_nb(p, slow)
