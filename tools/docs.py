"""Build the documentation site into `_docs/`, offline and without Quarto (what `make docs` runs).

1. `nbdev_export`, so that `show_doc` cells document the code the notebooks hold now;
2. nbdev's own processing of the notebooks into `_proc/` (what `nbdev_proc_nbs` does, minus its attempts to
   install Quarto and to `pip install -e` the project); cells flagged `slow`/`gpu` keep the outputs of their real
   run, and a cell mixing imports with other code only has its imports re-run (see `_patch_nbdev_rerun`);
3. `smalldocs`, a pure-Python renderer of `_quarto.yml` sites, renders `_proc/` into `_docs/` (first, multi-line
   maths is kept whole as Pandoc keeps it: see `pandoc_math`);
4. everything a page loads is served by the site itself: KaTeX (the npm package `katex`) and the theme's font
   (`@fontsource/source-sans-pro`) are fetched once with `npm pack`, checked against their published sha512,
   cached under `$DPG_NB_CACHE` (default `~/.cache/dpg_nb`), copied into `_docs/site_libs/`, and the pages and
   the theme are pointed at those copies instead of a CDN.

Where Quarto is installed, `nbdev_docs` renders the same `_quarto.yml`; `python tools/docs.py --localize` then
makes the pages it wrote load KaTeX and fonts from the site too.

Usage: python tools/docs.py [--incremental] [--localize] [--npm-tgz FILE ...] [-q] [-v]
"""
import argparse, base64, hashlib, io, os, posixpath, re, shutil, subprocess, sys, tarfile, tempfile, time, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "docs_assets"
# The npm packages the site serves itself: name -> (version, npm's `dist.integrity` of its tarball)
NPM = {
    "katex": ("0.16.11", "sha512-RQrI8rlHY92OLf3rho/Ts8i/XvjgguEjOkO1BEXcU3N8BqPpSzBNwV/G0Ukr+P/l3ivvJUE/Fa/CwbS6HesGNQ=="),
    "@fontsource/source-sans-pro": ("5.3.0", "sha512-nd96qXI4stbyRPNEygS2cNhMkAc1kkW9+ORmIOK0oelPTyiitRPk/+9+HUuUYuEjwRRkK/+Gat2J9/NMJest/A=="),
}
KATEX_FILES = ("katex.min.css", "katex.min.js", "contrib/auto-render.min.js")  # what the pages load; plus fonts/
FONT_STYLES = ("300", "400", "600", "700", "400-italic", "700-italic")  # the weights the theme and pages use
# A KaTeX `dist` folder on a CDN, as smalldocs and Quarto write it: `https://<host>/npm/katex@<version>/dist`
KATEX_CDN = re.compile(r"""https?://[^"'\s()]+?/katex(?:@[^/"'\s]*)?/dist(?=/)""")
# A stylesheet importing web fonts from another host (the Bootswatch themes do)
CSS_IMPORT = re.compile(r"""@import\s+url\(\s*["']?(https?:)?//[^)"']+["']?\s*\)\s*;?""")
# A stylesheet or script a page would fetch from another host
REMOTE = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)=["'](?:https?:)?//[^"']+["'][^>]*>""", re.I)
# smalldocs warnings that say nothing wrong about this site: maths is KaTeX (served here), and nbdev's `output-file`
# (Quarto names a page `models.html`, smalldocs `03_models.html`; links between pages resolve either way)
KNOWN_WARNINGS = (r"html-math-method is ignored", r"output-file is not read")


# ---------------------------------------------------------------- nbdev's processing, with two fixes

def _patch_nbdev_rerun():
    "Patch nbdev's docs processing: flagged cells are left as run, cells mixing imports and code only import."
    # To rebuild `show_doc`'s namespace nbdev re-runs, out of context, every cell that imports something, and
    # replaces its outputs. Two cases go wrong: a cell flagged `slow`/`gpu` (settings.ini `tst_flags`) is heavy or
    # needs a GPU, and its stored outputs, from a real run, are what the page must show; a cell that imports and
    # then uses names from earlier cells fails with a NameError (nbdev's FAQ: keep imports in cells of their own).
    # Here the first is left alone, and the second runs its top-level imports only and keeps its stored outputs.
    import ast
    import nbdev.processors as P
    if getattr(P.exec_show_docs.__call__, "_patched", False): return
    from nbdev.config import get_config
    flags = set(get_config().get("tst_flags", "").split())
    orig = P.exec_show_docs.__call__
    def __call__(self, cell):
        if cell.cell_type != "code" or not cell.source: return orig(self, cell)
        d = set(getattr(cell, "directives_", None) or {})
        if flags & d: return
        if {"export", "exports", "exporti", "exec_doc"} & d or not hasattr(self, "k") or not self.nb.has_docs_:
            return orig(self, cell)
        if not _only_imports_rerun(cell.source): return orig(self, cell)  # (magics do not parse: nbdev's way)
        imports = [n for n in ast.parse(cell.source).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        if not imports: return
        self.k.run_cell("\n".join(ast.unparse(n) for n in imports))
        if self.k.exc: raise RuntimeError(f"the imports of this cell failed:\n{cell.source}") from self.k.exc
    __call__._patched = True
    P.exec_show_docs.__call__ = __call__


def _only_imports_rerun(src: str) -> bool:  # the patched processing re-runs only this cell's imports
    import ast
    try: body = ast.parse(src).body
    except SyntaxError: return False
    imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))]
    nested = any(isinstance(n, (ast.Import, ast.ImportFrom)) for t in body for n in ast.walk(t) if n is not t)
    shows = any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "show_doc" for t in body for n in ast.walk(t))
    return bool(imports or nested) and len(imports) != len(body) and not shows


def mixed_cells(nbs: Path) -> dict:  # notebook -> indices (among all its cells) of code cells mixing imports and code
    "The cells `nbdev_docs` (with Quarto) would re-run out of context: imports and other code in one cell."
    import json
    flagged = {"export", "exports", "exporti", "exec_doc", "slow", "gpu"}
    out = {}
    for nb in sorted(nbs.rglob("*.ipynb")):
        if any(p.startswith((".", "_")) for p in nb.relative_to(nbs).parts): continue
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        bad = []
        for i, c in enumerate(cells):
            if c["cell_type"] != "code": continue
            src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            ds = {m.group(1) for m in re.finditer(r"^\s*#\|\s*([\w-]+)", src, re.M)}
            if not (ds & flagged) and _only_imports_rerun(src): bad.append(i)
        if bad: out[str(nb.relative_to(nbs))] = bad
    return out


def _quiet_nbdev():
    "Hide nbdev's 'Found cells containing imports and other code' warning (shown with -v)."
    if not os.environ.get("DPG_NB_DOCS_VERBOSE"):
        warnings.filterwarnings("ignore", message="Found cells containing imports and other code")


# At import, so that the worker processes nbdev spawns (they import this file as `__mp_main__`) do the same
if os.environ.get("DPG_NB_DOCS_BUILD"): _patch_nbdev_rerun(); _quiet_nbdev()


def process_notebooks(force: bool = True, # rebuild `_proc` from scratch (else reuse what is up to date)
                      n_workers: int = 2, # processes for nbdev's notebook processing
                      quiet: bool = False, # leave out the notes on cells mixing imports and code
                     ) -> Path: # the `_proc` folder
    "nbdev's processing of every notebook into `_proc/`, as `nbdev_proc_nbs` does it, minus installing anything."
    from nbdev.config import get_config
    from nbdev.doclinks import nbdev_export
    from nbdev.serve import proc_nbs
    cfg = get_config()
    if not (cfg.nbs_path / "_quarto.yml").exists():
        raise RuntimeError(f"{cfg.nbs_path.name}/_quarto.yml is missing: it must be a symbolic link to ../_quarto.yml")
    nbdev_export.__wrapped__()
    for nb, cells in ({} if quiet else mixed_cells(cfg.nbs_path)).items():
        print(f"note: {nb}: cells {cells} (numbered from 0) mix imports with other code; only their "
              "imports were re-run here, but nbdev_docs would re-run them whole, out of context (nbdev's FAQ: keep "
              "imports in cells of their own)", file=sys.stderr)
    return proc_nbs(cfg.nbs_path, n_workers=n_workers, force=force)


# ---------------------------------------------------------------- maths as Pandoc reads it

# A line that CommonMark lets start a list, heading, quote or rule in the middle of a paragraph (Pandoc does not)
BLOCK_START = re.compile(r"^\s*(?:[-+*](?:\s|$)|#{1,6}(?:\s|$)|>|\d{1,9}[.)](?:\s|$)|=+\s*$|-+\s*$)")
DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
INLINE = re.compile(r"(?<![\\$])\$(?![\s$])([^$]+?)(?<![\s\\])\$(?!\d)", re.S)


def _join_math(m: re.Match) -> str:
    tex = m.group(0)
    if "\n" not in tex or "\n\n" in tex or "`" in tex: return tex
    lines = tex.split("\n")
    out = [lines[0]]
    for line in lines[1:]:
        if BLOCK_START.match(line) and "%" not in out[-1]: out[-1] += " " + line.lstrip()
        else: out.append(line)
    return "\n".join(out)


def pandoc_math(md: str) -> str:  # the same Markdown, with no line inside maths that CommonMark would read as a block
    "Keep multi-line maths whole: a line inside `$$...$$`/`$...$` starting with `+`, `-`, `#`, `>` or `1.` goes up one line."
    # Pandoc needs a blank line before a list, heading or quote, so `$$a\n+ b$$` is one equation there; smalldocs
    # parses blocks as CommonMark does, where `+ b$$` starts a list and the equation is lost. TeX reads the newline
    # as a space, so joining the lines changes nothing in the maths. Fenced code is left alone.
    parts = re.split(r"(^(?:```|~~~).*?^(?:```|~~~)[ \t]*$)", md, flags=re.S | re.M)
    return "".join(p if i % 2 else INLINE.sub(_join_math, DISPLAY.sub(_join_math, p)) for i, p in enumerate(parts))


def fix_math(proc: Path) -> int:  # how many markdown cells changed
    "Apply `pandoc_math` to every markdown cell of the processed notebooks in `proc`."
    import json
    n = 0
    for nb in sorted(proc.rglob("*.ipynb")):
        d = json.loads(nb.read_text(encoding="utf-8"))
        changed = False
        for c in d.get("cells", []):
            if c.get("cell_type") != "markdown": continue
            src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            new = pandoc_math(src)
            if new != src: c["source"] = new.splitlines(keepends=True); changed = True; n += 1
        if changed: nb.write_text(json.dumps(d, indent=1, ensure_ascii=False), encoding="utf-8")
    return n


# ---------------------------------------------------------------- npm packages, fetched once and checked

def cache_dir() -> Path:  # where fetched packages are kept between builds
    "The cache folder: `$DPG_NB_CACHE`, else `~/.cache/dpg_nb`."
    return Path(os.environ.get("DPG_NB_CACHE") or Path.home() / ".cache" / "dpg_nb").expanduser()


def _integrity(data: bytes) -> str:  # npm's `dist.integrity` string of `data`
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _tgz_name(name: str, version: str) -> str:  # the file `npm pack` writes
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def npm_package(name: str, # an npm package of `NPM`
                tgzs: list | None = None, # local tarballs to use instead of fetching (matched by file name)
               ) -> Path: # the unpacked package folder, checked
    "A local, checked copy of a pinned npm package, fetched with `npm pack` on first use and cached."
    version, integrity = NPM[name]
    home = cache_dir() / "npm" / f"{name.lstrip('@').replace('/', '-')}-{version}"
    if (home / ".complete").is_file(): return home
    fname = _tgz_name(name, version)
    local = next((Path(t) for t in tgzs or [] if Path(t).name == fname), None)
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent) as tmp:
        tmp = Path(tmp)
        if local is None:
            npm = shutil.which("npm")
            if npm is None:
                raise RuntimeError(f"{name}@{version} is not cached in {cache_dir()} and `npm` is missing: install Node.js "
                                   f"(e.g. `apt-get install npm`), or pass --npm-tgz with the file of `npm pack {name}@{version}`")
            subprocess.run([npm, "pack", f"{name}@{version}", "--pack-destination", str(tmp), "--silent"],
                           check=True, stdout=subprocess.DEVNULL)
            local = tmp / fname
        data = local.read_bytes()
        if _integrity(data) != integrity:
            raise RuntimeError(f"{local.name} does not match {name}@{version}'s published sha512: refusing to use it")
        out = tmp / "pkg"
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
            for m in tf.getmembers():  # regular files under package/ only: no links, no absolute paths, no `..`
                parts = posixpath.normpath(m.name).split("/")
                if not m.isfile() or parts[0] != "package" or ".." in parts or len(parts) < 2: continue
                dst = out.joinpath(*parts[1:])
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(tf.extractfile(m).read())
        (out / ".complete").write_text(f"{name}@{version}\n")
        shutil.rmtree(home, ignore_errors=True)
        out.rename(home)  # one rename: a build running beside this one sees all of it or none
    return home


# ---------------------------------------------------------------- pointing the site at its own copies

def _rel(target: Path, page: Path) -> str:  # a link from file `page` to `target`, relative
    return posixpath.relpath(target.as_posix(), page.parent.as_posix())


def localize_katex(site: Path, # the rendered site, e.g. `_docs`
                   pkg: Path, # the unpacked `katex` package
                  ) -> int: # how many pages load KaTeX (the pages with maths)
    "Copy KaTeX into `site/site_libs/katex` and point every page that loads it from a CDN at that copy."
    lib = site / "site_libs" / "katex"
    shutil.rmtree(lib, ignore_errors=True)
    for f in KATEX_FILES: (lib / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(pkg / "dist" / f, lib / f)
    shutil.copytree(pkg / "dist" / "fonts", lib / "fonts")
    shutil.copy2(pkg / "LICENSE", lib / "LICENSE")
    n = 0
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        new = KATEX_CDN.sub(_rel(lib, page), text)
        if new != text: page.write_text(new, encoding="utf-8")
        n += "katex/katex.min.js" in new
    return n


def localize_fonts(site: Path, # the rendered site
                   pkg: Path, # the unpacked `@fontsource/source-sans-pro` package
                  ) -> list: # the remote imports removed without a local stand-in
    "Serve the theme's web font (Source Sans Pro) from the site; drop other remote `@import`s of stylesheets."
    lib = site / "site_libs" / "source-sans-pro"
    shutil.rmtree(lib, ignore_errors=True); (lib / "files").mkdir(parents=True)
    css = []
    for style in FONT_STYLES:
        text = (pkg / f"{style}.css").read_text(encoding="utf-8")
        for f in re.findall(r"url\(\./files/([^)]+)\)", text): shutil.copy2(pkg / "files" / f, lib / "files" / f)
        css.append(text)
    (lib / "source-sans-pro.css").write_text("\n".join(css), encoding="utf-8")
    shutil.copy2(pkg / "LICENSE", lib / "LICENSE")
    dropped = []
    for sheet in sorted(site.rglob("*.css")):
        if lib in sheet.parents or site / "site_libs" / "katex" in sheet.parents: continue
        text = sheet.read_text(encoding="utf-8")
        def repl(m):
            if "Source+Sans+Pro" in m.group(0): return f'@import url("{_rel(lib / "source-sans-pro.css", sheet)}");'
            dropped.append(f"{sheet.relative_to(site)}: {m.group(0)}"); return ""
        new = CSS_IMPORT.sub(repl, text)
        if new != text: sheet.write_text(new, encoding="utf-8")
    return dropped


def add_favicon(site: Path) -> int:  # how many pages got the icon
    "Give the site an icon (else every page load asks for a missing /favicon.ico)."
    shutil.copy2(ASSETS / "favicon.svg", site / "favicon.svg")
    n = 0
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        if re.search(r"""<link[^>]+rel=["'](?:shortcut )?icon["']""", text) or "</head>" not in text: continue
        link = f'<link rel="icon" href="{_rel(site / "favicon.svg", page)}" type="image/svg+xml">'
        page.write_text(text.replace("</head>", link + "</head>", 1), encoding="utf-8"); n += 1
    return n


def tidy_code(site: Path) -> int:  # how many pages changed
    "Drop the blank first line nbdev writes at the top of every `show_doc` signature block."
    n = 0
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        new = re.sub(r'(<code class="sourceCode[^"]*">)\n+', r"\1", text)
        if new != text: page.write_text(new, encoding="utf-8"); n += 1
    return n


def remote_assets(site: Path) -> dict:  # file -> the remote scripts, stylesheets or imports it still loads
    "What pages and stylesheets of `site` would still fetch from another host."
    found = {}
    for f in sorted(site.rglob("*.html")):
        hits = REMOTE.findall(f.read_text(encoding="utf-8"))
        if hits: found[str(f.relative_to(site))] = hits
    for f in sorted(site.rglob("*.css")):
        hits = CSS_IMPORT.findall(f.read_text(encoding="utf-8"))
        if hits: found[str(f.relative_to(site))] = ["@import of a remote stylesheet"]
    return found


def localize(site: Path, tgzs: list | None = None) -> int:  # how many pages have maths
    "Make `site` self-contained: local KaTeX, local theme font, an icon. Fails if anything remote is left."
    n = localize_katex(site, npm_package("katex", tgzs))
    for d in localize_fonts(site, npm_package("@fontsource/source-sans-pro", tgzs)):
        print(f"warning: dropped a remote stylesheet import (no local copy): {d}", file=sys.stderr)
    add_favicon(site)
    tidy_code(site)
    remote = remote_assets(site)
    if remote: raise RuntimeError(f"parts of {site} still load from other hosts: {remote}")
    return n


# ---------------------------------------------------------------- the whole build

def build(force: bool = True, # rebuild `_proc` from scratch
          tgzs: list | None = None, # local `npm pack` tarballs, for machines that cannot reach a registry
          quiet: bool = False, # print only warnings
          n_workers: int = 2, # processes for nbdev's notebook processing
         ) -> Path: # the site folder, `_docs`
    "Build the whole site into `_docs/`: notebooks, smalldocs, local KaTeX and fonts."
    from nbdev.config import get_config
    from smalldocs.site import build as sd_build
    t0 = time.time()
    os.chdir(ROOT)
    cfg = get_config()
    # the notebooks import the package: make this checkout's copy importable, here and in nbdev's workers
    # (spawned workers start from this process's sys.path and environment), whether or not it is pip-installed
    if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
    os.environ["DPG_NB_DOCS_BUILD"] = "1"; _patch_nbdev_rerun(); _quiet_nbdev()
    for name in NPM: npm_package(name, tgzs)  # first: a missing package fails fast, before the long part
    proc = process_notebooks(force=force, n_workers=n_workers, quiet=quiet)
    fix_math(proc)
    t1 = time.time()
    out = proc / cfg.doc_path.name
    shutil.rmtree(out, ignore_errors=True)
    site = sd_build(proc, quiet=True)
    if Path(site.out).resolve() != out.resolve():
        raise RuntimeError(f"smalldocs wrote to {site.out}, not {out}: keep `output-dir: {cfg.doc_path.name}` in _quarto.yml")
    for w in site.warnings:
        if not any(re.search(k, w) for k in KNOWN_WARNINGS): print(f"warning: {w}", file=sys.stderr)
    n = localize(out, tgzs)
    shutil.rmtree(cfg.doc_path, ignore_errors=True)
    shutil.move(str(out), str(cfg.doc_path))
    pages = len(list(cfg.doc_path.rglob("*.html")))
    if not quiet:
        print(f"docs: {pages} pages in {cfg.doc_path.relative_to(ROOT)}/ ({n} with maths; KaTeX {NPM['katex'][0]} served "
              f"locally) in {time.time()-t0:.0f}s (notebooks {t1-t0:.0f}s, rendering {time.time()-t1:.0f}s)")
    return cfg.doc_path


def main(argv=None):
    try: _main(argv)
    except (RuntimeError, subprocess.CalledProcessError) as e: sys.exit(f"docs: {e}")


def _main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--incremental", action="store_true", help="reuse the processed notebooks in _proc/ that are up to date")
    p.add_argument("--localize", action="store_true", help="only make an existing _docs/ (e.g. from nbdev_docs) self-contained")
    p.add_argument("--npm-tgz", type=Path, nargs="*", default=[], help="tarballs from `npm pack` to use instead of fetching: "
                   + ", ".join(f"{n}@{v}" for n, (v, _) in NPM.items()))
    p.add_argument("--workers", type=int, default=2, help="processes for the notebook processing (default 2)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only warnings")
    p.add_argument("-v", "--verbose", action="store_true", help="also show nbdev's warnings about cells it re-runs")
    a = p.parse_args(argv)
    if a.verbose: os.environ["DPG_NB_DOCS_VERBOSE"] = "1"
    if a.localize:
        from nbdev.config import get_config
        os.chdir(ROOT)
        site = get_config().doc_path
        if not site.is_dir(): sys.exit(f"{site} does not exist: build the site first")
        n = localize(site, a.npm_tgz)
        print(f"docs: {site.name}/ is self-contained ({n} pages with maths)")
        return
    build(force=not a.incremental, tgzs=a.npm_tgz, quiet=a.quiet, n_workers=a.workers)


if __name__ == "__main__":
    main()
