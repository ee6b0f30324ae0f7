"""The documentation site, in a real browser.

Builds the site with `tools/docs.py` (what `make docs` runs), serves `_docs/` on 127.0.0.1, opens every page in
headless Chromium (driven over the DevTools protocol on a pipe: no extra Python package), and asserts for every
notebook's page that
- it loads with no console error, no failed or error response, and no request to any other host;
- every equation was rendered by KaTeX: each `span.math` holds a `.katex`, at least as many as the HTML has
  equations, no `.katex-error`, and no TeX left in the text (`\\(`, `\\[`, `$$`, a `$...$` Pandoc did not take as maths,
  a loose TeX command);
- every `show_doc` entry (each public function or class of an exported cell, each explicit `show_doc(...)`) has its
  heading and a signature, and every image (figure) loaded, at least as many as the notebook stores;
- the sidebar links reach every page, and each of them answers.
Screenshots of the home page and of one API page go to `tests/artifacts/`.

Chromium missing: the test skips, saying how to install it; under CI (`CI=true`) that is a failure instead.
"""
import ast, base64, fcntl, functools, html, json, os, re, shutil, signal, subprocess, sys, tempfile, threading, time, warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS, SITE, ARTIFACTS = ROOT / "nbs", ROOT / "_docs", ROOT / "tests" / "artifacts"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
INSTALL_HINT = ("headless Chromium is needed for the docs' browser test: `sudo apt-get install -y chromium` "
                "(or `bash tools/install_ci_deps.sh`), or set CHROMIUM=/path/to/chrome")
WIDTH, HEIGHT = 1366, 900


# ---------------------------------------------------------------- what each page must show, read from its notebook

def _directives(src: str) -> dict:  # the `#| key: value` lines at the top of a cell
    d = {}
    for line in src.splitlines():
        m = re.match(r"\s*#\|\s*([\w-]+)\s*:?\s*(.*)$", line)
        if m: d[m.group(1)] = m.group(2).strip()
        elif line.strip(): break
    return d


def _hidden(d: dict) -> bool:  # nbdev drops this cell from the page
    return "hide" in d or d.get("include") == "false"


def _src(cell) -> str: return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def expected(nb: Path) -> dict:
    "What the page of notebook `nb` must show: its `show_doc` names and the number of its stored images."
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    docs, hidden_docs, images = [], [], 0
    for c in cells:
        if c["cell_type"] != "code": continue
        src = _src(c); d = _directives(src)
        try:
            with warnings.catch_warnings():  # notebook code may hold escapes Python warns about; not our business here
                warnings.simplefilter("ignore")
                tree = ast.parse("\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!"))))
        except SyntaxError: tree = None
        if tree and not _hidden(d) and ({"export", "exports"} & d.keys()):  # nbdev documents these itself
            docs += [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and (not n.name.startswith("_") or n.name.startswith("__"))]
        if tree:  # explicit show_doc(X) or show_doc(X.y); one in a hidden cell shows nothing, and nbdev then skips X
            for n in ast.walk(tree):
                if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "show_doc" and n.args:
                    (hidden_docs if _hidden(d) else docs).append(ast.unparse(n.args[0]))
        if not _hidden(d) and d.get("output") != "false":
            images += sum(any(k.startswith("image/") for k in o.get("data", {})) for o in c.get("outputs", []))
    return dict(docs=[n for n in dict.fromkeys(docs) if n not in hidden_docs], images=images)


def math_count(page_html: str) -> int:
    "How many equations the HTML holds: Pandoc and smalldocs wrap each in `<span class=\"math inline|display\">`."
    return len(re.findall(r"""<span\b[^>]*\bclass=["']math (?:inline|display)\b""", page_html))


def notebook_pages() -> dict:  # page (relative to the site) -> its notebook
    "Every notebook of `nbs/` (not `_`/`.` ones, as nbdev) and the page smalldocs writes for it."
    return {str(nb.relative_to(NBS).with_suffix(".html")): nb for nb in sorted(NBS.rglob("*.ipynb"))
            if not any(p.startswith((".", "_")) for p in nb.relative_to(NBS).parts)}


# ---------------------------------------------------------------- headless Chromium over the DevTools protocol

def find_chromium() -> str | None:
    exe = os.environ.get("CHROMIUM")
    if exe: return exe if Path(exe).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if shutil.which(name): return shutil.which(name)
    return None


class Chromium:
    "Headless Chromium, spoken to over `--remote-debugging-pipe` (fd 3 in, fd 4 out, messages end with NUL)."

    def __init__(self, exe: str, width: int = WIDTH, height: int = HEIGHT):
        self.profile = tempfile.mkdtemp(prefix="dpg-chromium-")
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # the child's ends, numbered >= 10 so that moving them to 3 and 4 cannot clobber one with the other
        a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10); b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        for fd in (to_chrome_r, from_chrome_w): os.close(fd)
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
                "--no-default-browser-check", f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                "--remote-debugging-pipe", "about:blank"]
        # a small Python launcher puts the pipe on fds 3 and 4, then becomes Chromium (no preexec_fn: threads run here)
        launch = "import os,sys; os.dup2(int(sys.argv[1]),3); os.dup2(int(sys.argv[2]),4); os.execv(sys.argv[3], sys.argv[3:])"
        self.log = open(Path(self.profile) / "stderr.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", launch, str(a), str(b), *args], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log, pass_fds=(a, b), start_new_session=True)
        os.close(a); os.close(b)
        self.w, self.r = to_chrome_w, from_chrome_r
        self.next_id, self.replies, self.events, self.closed = 0, {}, [], False
        self.cv = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True); self.reader.start()

    def _read(self):
        buf = b""
        while True:
            try: chunk = os.read(self.r, 1 << 16)
            except OSError: chunk = b""
            if not chunk: break
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            with self.cv:
                for m in msgs:
                    m = json.loads(m)
                    if "id" in m: self.replies[m["id"]] = m
                    else: self.events.append(m)
                self.cv.notify_all()
        with self.cv: self.closed = True; self.cv.notify_all()

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        with self.cv: self.next_id += 1; i = self.next_id
        msg = {"id": i, "method": method, "params": params}
        if session: msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data: data = data[os.write(self.w, data):]
        with self.cv:
            if not self.cv.wait_for(lambda: i in self.replies or self.closed, timeout):
                raise TimeoutError(f"Chromium did not answer {method} within {timeout}s")
            if i not in self.replies: raise RuntimeError(f"Chromium exited: {self.stderr()}")
            r = self.replies.pop(i)
        if "error" in r: raise RuntimeError(f"{method}: {r['error']}")
        return r.get("result", {})

    def wait_event(self, method: str, session: str, since: int, timeout: float = 60) -> dict:
        def find():
            return next((e for e in self.events[since:] if e["method"] == method and e.get("sessionId") == session), None)
        with self.cv:
            if not self.cv.wait_for(find, timeout): raise TimeoutError(f"no {method} within {timeout}s")
            return find()

    def stderr(self) -> str: return (Path(self.profile) / "stderr.log").read_text(errors="replace")[-2000:]

    def close(self):
        try: self.call("Browser.close", timeout=10)
        except Exception: pass
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired:  # Chromium and its child processes: one process group
            os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait(10)
        for fd in (self.w, self.r):
            try: os.close(fd)
            except OSError: pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


class Tab:
    "One page of the browser, with everything it reported since its last `goto`."

    def __init__(self, browser: Chromium, width: int = WIDTH, height: int = HEIGHT):
        self.b = browser
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        self.s = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"): browser.call(f"{domain}.enable", self.s)
        browser.call("Emulation.setDeviceMetricsOverride", self.s, width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.mark = 0

    def goto(self, url: str, timeout: float = 60):
        "Open `url` and wait until it, its fonts, and its deferred scripts are done."
        self.mark = len(self.b.events)
        r = self.b.call("Page.navigate", self.s, url=url)
        if r.get("errorText"): raise AssertionError(f"{url}: {r['errorText']}")
        self.b.wait_event("Page.loadEventFired", self.s, self.mark, timeout)
        self.eval("document.fonts.ready.then(() => true)")  # KaTeX's fonts are fetched once maths is laid out
        self.eval("new Promise(r => setTimeout(() => r(true), 100))")  # let the last requests report

    def eval(self, js: str):
        r = self.b.call("Runtime.evaluate", self.s, expression=js, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r: raise AssertionError(f"{js[:60]}...: {r['exceptionDetails']}")
        return r["result"].get("value")

    def seen(self) -> list[dict]:
        with self.b.cv: return [e for e in self.b.events[self.mark:] if e.get("sessionId") == self.s]

    def problems(self, origin: str) -> list[str]:
        "Console errors, exceptions, failed or error responses, and requests to another host, since `goto`."
        out = []
        for e in self.seen():
            m, p = e["method"], e["params"]
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]; out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
                out.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
            elif m == "Network.loadingFailed" and not p.get("canceled"):
                out.append(f"failed to load ({p['errorText']}): request {p['requestId']}")
            elif m == "Network.requestWillBeSent":
                u = p["request"]["url"]
                if not (u.startswith(origin) or u.split(":", 1)[0] in ("data", "blob", "about")):
                    out.append(f"request to another host: {u}")
        return out

    def screenshot(self, path: Path):
        png = self.b.call("Page.captureScreenshot", self.s, format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True); path.write_bytes(base64.b64decode(png))


# The facts the browser reports about one page
PROBE = r"""(() => {
  const q = s => Array.from(document.querySelectorAll(s));
  const main = document.querySelector('main') || document.body;
  const raw = [];
  const walk = document.createTreeWalker(main, NodeFilter.SHOW_TEXT, {acceptNode: n =>
      n.parentElement.closest('pre, code, script, style, .katex, textarea') ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
  // TeX that KaTeX did not get: its delimiters, `$...$` that Pandoc's rules did not take as maths (e.g. a space
  // before the closing `$`), or a TeX command loose in the text
  const tex = /\\\(|\\\)|\\\[|\\\]|\$\$|\$[^$\n]*(\\[a-zA-Z]+|[\^_]\{)[^$\n]*\$|\\(frac|sqrt|mathbb|mathcal|mathbf|partial|nabla|sum|prod|int|alpha|beta|eta|theta|lambda|sigma|phi|Phi|left|right|begin|end|text|operatorname|cdot|le|ge|in)\b/;
  for (let n; (n = walk.nextNode());) {
    const m = n.textContent.match(tex);
    if (m) { const i = Math.max(0, m.index - 30); raw.push(n.textContent.slice(i, m.index + 50).replace(/\s+/g, ' ')); }
  }
  const heads = q('main h1, main h2, main h3, main h4').map(h => {
    // the signature nbdev writes right after a show_doc heading: a code block inside the same output
    const out = h.closest('.cell-output') || h.parentElement;
    const pre = out ? out.querySelector('pre') : null;
    return {text: h.textContent.trim(), id: h.id, sig: pre ? pre.textContent : ''};
  });
  return {
    title: document.title,
    katex: q('.katex').length, katexErrors: q('.katex-error').map(e => e.textContent.slice(0, 80)),
    unrendered: q('span.math').filter(s => !s.querySelector('.katex')).map(s => s.textContent.slice(0, 80)),
    katexFontOk: document.fonts.check('16px KaTeX_Main'),
    raw, heads,
    images: q('main img').map(i => ({src: i.src.slice(0, 60), ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth})),
    sidebar: q('#quarto-sidebar a[href]').map(a => a.href),
  };
})()"""


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def chromium():
    exe = find_chromium()
    if exe is None:
        if IN_CI: pytest.fail(f"CI=true and no Chromium: {INSTALL_HINT}", pytrace=False)
        pytest.skip(INSTALL_HINT)
    b = Chromium(exe)
    try: yield b
    finally: b.close()


@pytest.fixture(scope="module")
def site(pytestconfig):
    "The site, built as `make docs` builds it."
    t0 = time.time()
    r = subprocess.run([sys.executable, "tools/docs.py", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"tools/docs.py failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    capman = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled(): print(f"\ndocs built in {time.time() - t0:.0f}s ({SITE})")
    return SITE


@pytest.fixture(scope="module")
def origin(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    try: yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally: srv.shutdown(); srv.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *a): pass


@pytest.fixture(scope="module")
def tab(chromium):
    return Tab(chromium)


# ---------------------------------------------------------------- the checks

def test_every_notebook_has_a_page(site):
    pages = notebook_pages()
    assert "index.html" in pages, "nbs/index.ipynb (the home page) is missing"
    missing = [p for p in pages if not (site / p).is_file()]
    assert not missing, f"notebooks without a page in {site.name}/: {missing}"
    assert (site / "site_libs/katex/katex.min.js").is_file() and list((site / "site_libs/katex/fonts").glob("*.woff2"))


@pytest.mark.parametrize("page", sorted(notebook_pages()))
def test_page_in_browser(page, tab, site, origin, capsys):
    nb = notebook_pages()[page]
    want = expected(nb)
    src_html = (site / page).read_text(encoding="utf-8")
    n_math = math_count(src_html)
    tab.goto(origin + page)
    facts = tab.eval(PROBE)
    problems = tab.problems(origin)
    assert not problems, f"{page}: " + "\n".join(problems)
    # maths: every equation became KaTeX, none failed, none left raw
    assert not facts["unrendered"], f"{page}: equations KaTeX did not render: {facts['unrendered']}"
    assert facts["katex"] >= n_math, f"{page}: {n_math} equations in the HTML but {facts['katex']} rendered by KaTeX"
    assert not facts["katexErrors"], f"{page}: KaTeX could not parse {facts['katexErrors']}"
    assert not facts["raw"], f"{page}: maths left unrendered: {facts['raw']}"
    if n_math: assert facts["katexFontOk"], f"{page}: KaTeX's fonts did not load"
    # show_doc: a heading per documented name, with its signature under it
    heads = {h["text"]: h for h in facts["heads"]}
    for name in want["docs"]:
        h = heads.get(name)
        assert h is not None, f"{page}: no show_doc heading for `{name}` (headings: {sorted(heads)[:20]})"
        short = name.split(".")[-1]
        assert re.search(rf"\b(def|class)\s+{re.escape(short)}\b|\b{re.escape(short)}\s*\(", h["sig"]), \
            f"{page}: the show_doc of `{name}` has no signature: {h['sig'][:200]!r}"
    # figures: all loaded, none lost
    bad = [i for i in facts["images"] if not i["ok"]]
    assert not bad, f"{page}: images that did not load: {bad}"
    assert len(facts["images"]) >= want["images"], \
        f"{page}: the notebook stores {want['images']} images, the page shows {len(facts['images'])}"
    with capsys.disabled():
        print(f"\n{page}: {facts['katex']} equations rendered by KaTeX, {len(want['docs'])} show_doc entries, "
              f"{len(facts['images'])} images", end="")
    if page == "index.html":
        tab.screenshot(ARTIFACTS / "docs-home.png")
        with capsys.disabled(): print(f"\nscreenshot of the home page: {ARTIFACTS / 'docs-home.png'}")


def test_sidebar_reaches_every_page(tab, site, origin):
    tab.goto(origin + "index.html")
    links = tab.eval(PROBE)["sidebar"]
    local = {urlsplit(u).path.lstrip("/") for u in links if u.startswith(origin)}
    missing = sorted(set(notebook_pages()) - local)
    assert not missing, f"pages the sidebar does not link to: {missing}"
    for u in sorted({u.split("#")[0] for u in links if u.startswith(origin)}):
        with urlopen(u, timeout=10) as r: assert r.status == 200, u


def test_api_page_screenshot(tab, site, origin, capsys):
    "Save a screenshot of an API page: the first (in sidebar order) with a `show_doc` entry, scrolled to it."
    pages = notebook_pages()
    api = [p for p, nb in pages.items() if p != "index.html" and expected(nb)["docs"]]
    if not api: pytest.skip("no notebook has a show_doc entry yet")
    page = api[0]
    name = expected(pages[page])["docs"][0]
    tab.goto(origin + page)
    found = tab.eval(f"""(() => {{ const h = Array.from(document.querySelectorAll('main .cell-output h2, main .cell-output h3, main .cell-output h4'))
        .find(h => h.textContent.trim() === {json.dumps(name)});
        if (h) window.scrollTo({{top: h.getBoundingClientRect().top + window.scrollY - 160, behavior: 'instant'}}); return !!h; }})()""")
    assert found, f"{page}: no show_doc heading for {name}"
    tab.eval("new Promise(r => setTimeout(() => r(true), 200))")
    out = ARTIFACTS / f"docs-api-{Path(page).stem}.png"
    tab.screenshot(out)
    with capsys.disabled(): print(f"\nscreenshot of an API page: {out}")
    assert out.stat().st_size > 10_000
