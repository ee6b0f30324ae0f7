"README.md is generated from the home page notebook, and CI runs the test command it gives."
import subprocess, sys, re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def test_readme_matches_index():
    r = subprocess.run([sys.executable, "tools/readme.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

def test_two_setup_commands():
    text = (ROOT/"README.md").read_text()
    cmds = re.findall(r"^pip install .*$", text, flags=re.M)
    assert len(cmds) == 2, cmds
    assert cmds[0].endswith("&& dpg run sixseven") and cmds[1].endswith("&& make test")
    assert cmds[1] in (ROOT/".ci"/"run").read_text() or "README.md" in (ROOT/".ci"/"run").read_text()
