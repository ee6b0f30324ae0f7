"""Write README.md from nbs/index.ipynb, so the repository's front page and the site's home page never drift apart.
Usage: python tools/readme.py [--check]   (--check: exit 1 if README.md differs from what index.ipynb gives)"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _src(cell): return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]

def readme_text(nb_path=ROOT/"nbs"/"index.ipynb"):
    "README markdown: markdown cells as they are, code cells as python blocks with their text output, `#| hide` cells left out."
    nb = json.loads(Path(nb_path).read_text())
    parts = ["<!-- Generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file. -->"]
    for c in nb["cells"]:
        src = _src(c).strip()
        if not src: continue
        if c["cell_type"] == "markdown":
            parts.append(re.sub(r"\]\(((?:lab/|results/)?[\w./-]+\.(?:ipynb|png))\)", r"](nbs/\1)", src))   # pages, lab pages and kept figures, seen from the repository root
            continue
        lines = src.splitlines()
        if any(l.strip().startswith("#|") and ("hide" in l or "exec_doc" in l) for l in lines): continue
        code = "\n".join(l for l in lines if not l.strip().startswith("#|")).strip()
        parts.append(f"```python\n{code}\n```")
        out = "".join("".join(o.get("text", "")) for o in c.get("outputs", []) if o.get("output_type") == "stream" and o.get("name", "stdout") == "stdout").strip()
        if out: parts.append(f"```\n{out}\n```")
    return "\n\n".join(parts) + "\n"

if __name__ == "__main__":
    text, readme = readme_text(), ROOT/"README.md"
    if "--check" in sys.argv:
        ok = readme.exists() and readme.read_text() == text
        print("README.md matches nbs/index.ipynb" if ok else "README.md is out of date: run `make readme`")
        sys.exit(0 if ok else 1)
    readme.write_text(text)
    print(f"wrote {readme.relative_to(ROOT)}")
