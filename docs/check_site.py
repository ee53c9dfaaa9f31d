"""Renders every page of the built documentation site in headless chromium and checks it.

    mkdocs build --strict -d site && python docs/check_site.py site

Each page is served over HTTP from the site folder (as a web server would) and loaded by chromium, which prints the
rendered DOM and the page's console messages. A page passes when
  * it logs nothing to the console (no uncaught error, no console.error or warning),
  * every request it made was served (no 404: missing images, scripts, styles),
  * it asks nothing of another host (the site must work offline),
  * its main column has a heading and real content,
  * every internal link and image in the rendered DOM resolves to a file of the site, and every #fragment to an
    element id in the target page.
Needs Debian's chromium (`apt-get install -y chromium`). Exit status 0 when every page passes, 1 otherwise.
"""
import argparse
import functools
import html.parser
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000", "--dump-dom"]
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\] (.*)")
MIN_TEXT = 200   # characters of text in the main column
# mkdocs' search plugin logs its progress with console.log; chromium's log does not tell levels apart, so these
# progress lines (and only these) are allowed. Its failures ("Error: ...", "Could not load worker.js") are not.
SEARCH_PROGRESS = re.compile(r'^"(Loaded worker|Loading script: [^"]*|All search scripts loaded, building Lunr '
                             r'index\.\.\.|Lunr (pre-built )?index (built|loaded), search ready)", source: ')


class Page(html.parser.HTMLParser):
  """The links, resources, element ids, headings and main-column text of one HTML document."""

  def __init__(self):
    super().__init__()
    self.links, self.resources, self.ids, self.headings, self.text = [], [], set(), 0, []
    self._main_depth = 0

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if "id" in attrs:
      self.ids.add(attrs["id"])
    if tag == "a" and attrs.get("href"):
      self.links.append(attrs["href"])
    for name in ("src", "href"):
      if tag in ("img", "script", "link") and attrs.get(name):
        self.resources.append(attrs[name])
    if self._main_depth:
      self._main_depth += tag not in ("img", "br", "hr", "input", "meta", "link")
    elif attrs.get("role") == "main":
      self._main_depth = 1
    if tag == "h1" and self._main_depth:
      self.headings += 1

  def handle_endtag(self, tag):
    if self._main_depth:
      self._main_depth -= 1

  def handle_data(self, data):
    if self._main_depth:
      self.text.append(data.strip())


def parse(text):
  page = Page()
  page.feed(text)
  return page


class _Handler(http.server.SimpleHTTPRequestHandler):
  failures = []   # (status, path), appended by the serving thread

  def log_message(self, *args):
    pass

  def send_error(self, code, message=None, explain=None):
    type(self).failures.append((code, self.path))
    super().send_error(code, message, explain)


def serve(site):
  handler = type("Handler", (_Handler,), {"failures": []})
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=site))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server, handler.failures


def render(chromium, url, profile):
  """(rendered DOM, console messages) of one page, in a fresh profile."""
  out = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url], capture_output=True,
                       text=True, timeout=120)
  console = [m.group(1) for m in map(CONSOLE.search, out.stderr.splitlines()) if m]
  return out.stdout, console


def site_pages(site):
  for root, _, files in os.walk(site):
    for f in files:
      if f.endswith(".html") and f != "404.html":
        yield os.path.relpath(os.path.join(root, f), site).replace(os.sep, "/")


def target_file(site, page, href):
  """The site file (and fragment) an internal href points to, or None for an external or special link."""
  parts = urllib.parse.urlsplit(href)
  if parts.scheme in ("mailto", "javascript", "data"):
    return None
  if parts.scheme or parts.netloc:
    return "external"
  path = urllib.parse.unquote(parts.path)
  resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
  if path.endswith("/") or os.path.isdir(os.path.join(site, resolved)):
    resolved = os.path.join(resolved, "index.html")
  return resolved.replace(os.sep, "/"), parts.fragment


def check_links(site, page, dom, ids_of):
  problems = []
  for href in dom.links + dom.resources:
    target = target_file(site, page, href)
    if target is None:
      continue
    if target == "external":
      if href in dom.resources:
        problems.append(f"loads a resource from another host: {href}")
      continue
    path, fragment = target
    if not os.path.isfile(os.path.join(site, path)):
      problems.append(f"broken link: {href} -> {path}")
    elif fragment and path.endswith(".html") and fragment not in ids_of(path):
      problems.append(f"broken anchor: {href} (no id {fragment!r} in {path})")
  return problems


def check_page(chromium, site, base, page, failures, ids_of):
  """The problems of one page (empty when it passes)."""
  del failures[:]
  profile = tempfile.mkdtemp(prefix="check_site_")
  try:
    text, console = render(chromium, base + page, profile)
  finally:
    shutil.rmtree(profile, ignore_errors=True)
  dom = parse(text)
  problems = [f"console: {m}" for m in console if not SEARCH_PROGRESS.match(m)]
  problems += [f"HTTP {code} for {path}" for code, path in failures if not path.endswith("favicon.ico")]
  content = len(" ".join(t for t in dom.text if t))
  if not dom.headings or content < MIN_TEXT:
    problems.append(f"no content: {dom.headings} h1 and {content} characters in the main column")
  return problems + check_links(site, page, dom, ids_of)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("site", help="the built site folder (mkdocs build -d SITE)")
  p.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
  args = p.parse_args(argv)
  site = os.path.abspath(args.site)
  if not os.path.isfile(os.path.join(site, "index.html")):
    p.error(f"{site} holds no built site (no index.html); run mkdocs build first")
  server, failures = serve(site)
  base = f"http://127.0.0.1:{server.server_address[1]}/"
  ids_of = functools.lru_cache(None)(lambda path: parse(open(os.path.join(site, path)).read()).ids)
  bad = 0
  for page in sorted(site_pages(site)):
    problems = check_page(args.chromium, site, base, page, failures, ids_of)
    print(f"{'FAIL' if problems else 'ok  '} {page}")
    for problem in problems:
      print(f"     {problem}")
    bad += bool(problems)
  server.shutdown()
  print(f"{bad} of {len(list(site_pages(site)))} pages failed" if bad else "every page passed")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
