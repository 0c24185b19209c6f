#!/usr/bin/env python3
"""A WordPress client that behaves like a browser's media uploader and block editor.

Python standard library only, so offload's Rust e2e tests can run it as a subprocess.
Every command prints one JSON document on stdout (diagnostics go to stderr) and exits
non-zero when WordPress did not answer as expected.

    python3 scripts/e2e/wp_client.py make-jpeg --out /tmp/x.jpg [--width 2000 --height 1500]
    python3 scripts/e2e/wp_client.py upload   --base URL --file F [--via async|rest|rest-raw]
    python3 scripts/e2e/wp_client.py post     --base URL --attachment-id ID [--title T]
    python3 scripts/e2e/wp_client.py page     --base URL --url POST_URL [--login]
    python3 scripts/e2e/wp_client.py library  --base URL
    python3 scripts/e2e/wp_client.py media    --base URL --attachment-id ID
    python3 scripts/e2e/wp_client.py scenario --base URL [--file F] [--uploads-dir DIR]

--raw-out FILE (upload, media, library, page) also writes the answer's body as received.

--base is where requests go (WordPress itself or the proxy in front of it). Credentials:
--user/--password, else $WP_ADMIN_USER/$WP_ADMIN_PASSWORD, else the state file written by
wordpress-up.sh (--state, default $OFFLOAD_E2E_DIR/wordpress/wordpress.env), else
admin / offload-test-pw. --host sets the Host header (e.g. to reach WordPress directly
while it emits the proxy's URLs); --forwarded-proto https sends X-Forwarded-Proto.
"""

import argparse
import http.cookiejar
import json
import mimetypes
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))


def eprint(*a):
    print(*a, file=sys.stderr)


def read_state(path):
    state = {}
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#") or "=" not in line:
                    continue
                k, v = line.split("=", 1)
                state[k] = v
    return state


class Response:
    def __init__(self, status, headers, body, url):
        self.status = status
        self.headers = headers
        self.body = body
        self.url = url

    @property
    def content_type(self):
        return self.headers.get("Content-Type", "")

    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def summary(self, parse_json=True):
        out = {"status": self.status, "content_type": self.content_type, "url": self.url}
        if parse_json:
            try:
                out["json"] = self.json()
            except ValueError:
                out["text"] = self.text()[:4000]
        return out


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class WP:
    def __init__(self, base, user, password, host=None, forwarded_proto=None, timeout=120):
        self.base = base.rstrip("/")
        self.user = user
        self.password = password
        self.host = host
        self.forwarded_proto = forwarded_proto
        self.timeout = timeout
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.noredir = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)
        self.rest_nonce = None

    def url(self, path):
        if path.startswith("http://") or path.startswith("https://"):
            return path
        return self.base + path

    def request(self, method, path, data=None, headers=None, follow=True):
        h = {"User-Agent": "offload-e2e-wp-client/1"}
        if self.host:
            h["Host"] = self.host
        if self.forwarded_proto:
            h["X-Forwarded-Proto"] = self.forwarded_proto
        if headers:
            h.update(headers)
        req = urllib.request.Request(self.url(path), data=data, headers=h, method=method)
        opener = self.opener if follow else self.noredir
        try:
            with opener.open(req, timeout=self.timeout) as r:
                return Response(r.status, r.headers, r.read(), r.geturl())
        except urllib.error.HTTPError as e:
            return Response(e.code, e.headers, e.read() if e.fp else b"", self.url(path))

    # ------------------------------------------------------------------ session
    def login(self, attempts=3):
        """Logs in and checks the session took: concurrent logins of one user race on its
        session tokens in the database (a WordPress read-modify-write), so a login can come
        back with cookies whose session another login has just overwritten. The e2e site's
        must-use plugin (scripts/e2e/wordpress/mu-plugins) removes that race; the check
        stays for sites without it."""
        for attempt in range(1, attempts + 1):
            self.sign_on()
            r = self.fetch_rest_nonce()
            if r.status == 200:
                return
            eprint(f"login {attempt}: the session is gone (rest-nonce HTTP {r.status}); "
                   "logging in again")
        raise SystemExit(f"login failed: the session never held ({attempts} attempts)")

    def sign_on(self):
        self.request("GET", "/wp-login.php")  # sets wordpress_test_cookie
        form = urllib.parse.urlencode({
            "log": self.user, "pwd": self.password, "wp-submit": "Log In",
            "redirect_to": self.url("/wp-admin/"), "testcookie": "1",
        }).encode()
        r = self.request("POST", "/wp-login.php", form,
                         {"Content-Type": "application/x-www-form-urlencoded"}, follow=False)
        names = [c.name for c in self.jar]
        if r.status != 302 or not any(n.startswith("wordpress_logged_in_") for n in names):
            raise SystemExit(f"login failed: HTTP {r.status}, cookies {names}: {r.text()[:500]}")

    def media_form_nonce(self):
        r = self.request("GET", "/wp-admin/media-new.php")
        if "wp-login.php" in r.url:
            # Concurrent logins of one user race on its session tokens in the database (a
            # WordPress read-modify-write): the session may be gone. Log in once more.
            eprint("media-new.php sent us to the login page; logging in again")
            self.login()
            r = self.request("GET", "/wp-admin/media-new.php")
        html = r.text()
        form = re.search(r'<form[^>]*id="file-form"[^>]*>.*?</form>', html, re.S)
        scope = form.group(0) if form else html
        m = re.search(r'name="_wpnonce"\s+value="([0-9a-f]+)"', scope) or \
            re.search(r'"_wpnonce":"([0-9a-f]+)"', html)
        if not m:
            raise SystemExit(f"no _wpnonce in media-new.php (HTTP {r.status})")
        return m.group(1)

    def fetch_rest_nonce(self):
        """admin-ajax answers 400 "0" when the session is not (or no longer) logged in."""
        self.rest_nonce = None
        r = self.request("GET", "/wp-admin/admin-ajax.php?action=rest-nonce")
        nonce = r.text().strip()
        if r.status == 200:
            if not re.fullmatch(r"[0-9a-f]{10}", nonce):
                raise SystemExit(f"rest-nonce: not a nonce: {nonce[:200]}")
            self.rest_nonce = nonce
        return r

    def get_rest_nonce(self):
        if not self.rest_nonce:
            r = self.fetch_rest_nonce()
            if r.status != 200:
                raise SystemExit(f"rest-nonce failed: HTTP {r.status}: {r.text()[:200]}")
        return self.rest_nonce

    def rest(self, method, path, body=None, headers=None):
        h = {"X-WP-Nonce": self.get_rest_nonce()}
        if headers:
            h.update(headers)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        return self.request(method, path, body, h)

    # ------------------------------------------------------------------ uploads
    @staticmethod
    def multipart(fields, files):
        boundary = "----offloade2e" + uuid.uuid4().hex
        parts = []
        for k, v in fields:
            parts.append((f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'
                          ).encode() + str(v).encode() + b"\r\n")
        for k, filename, ctype, data in files:
            parts.append((f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; '
                          f'filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n').encode()
                         + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        return b"".join(parts), f"multipart/form-data; boundary={boundary}"

    def upload_async(self, path, name=None):
        """The media uploader (plupload) of /wp-admin/media-new.php and the media modal."""
        nonce = self.media_form_nonce()
        name = name or os.path.basename(path)
        with open(path, "rb") as f:
            data = f.read()
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        body, ct = self.multipart(
            [("name", name), ("action", "upload-attachment"), ("_wpnonce", nonce)],
            [("async-upload", name, ctype, data)])
        return self.request("POST", "/wp-admin/async-upload.php", body, {"Content-Type": ct})

    def upload_rest(self, path, name=None):
        """The block editor: multipart field `file` to /wp-json/wp/v2/media."""
        name = name or os.path.basename(path)
        with open(path, "rb") as f:
            data = f.read()
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        body, ct = self.multipart([], [("file", name, ctype, data)])
        return self.rest("POST", "/wp-json/wp/v2/media", body, {"Content-Type": ct})

    def upload_rest_raw(self, path, name=None):
        """Raw body with Content-Disposition (wp.apiFetch / wp-cli style clients)."""
        name = name or os.path.basename(path)
        with open(path, "rb") as f:
            data = f.read()
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return self.rest("POST", "/wp-json/wp/v2/media", data, {
            "Content-Type": ctype, "Content-Disposition": f'attachment; filename="{name}"'})

    # ------------------------------------------------------------------ content
    def media(self, attachment_id):
        return self.rest("GET", f"/wp-json/wp/v2/media/{attachment_id}?context=edit")

    def create_post(self, attachment_id, title=None):
        # A title of its own per post: WordPress makes a slug unique by looking before it
        # inserts, so posts of one title created at once (tests run in parallel) can share a
        # slug, and its page then shows only one of them.
        title = title or f"offload e2e post {attachment_id}"
        m = self.media(attachment_id)
        if m.status != 200:
            raise SystemExit(f"media {attachment_id}: HTTP {m.status}: {m.text()[:300]}")
        media = m.json()
        sizes = media.get("media_details", {}).get("sizes", {})
        large = sizes.get("large") or sizes.get("full") or {}
        src = large.get("source_url") or media["source_url"]
        w, h = large.get("width"), large.get("height")
        full = media["source_url"]
        srcset = ", ".join(f'{s["source_url"]} {s["width"]}w'
                           for k, s in sorted(sizes.items(), key=lambda kv: kv[1]["width"])
                           if k != "thumbnail")
        # What the block editor (6.1) saves for an Image block: no srcset in the stored
        # markup, WordPress adds srcset/sizes when rendering (wp_filter_content_tags).
        content = (
            f'<!-- wp:image {{"id":{attachment_id},"sizeSlug":"large","linkDestination":"media"}} -->\n'
            f'<figure class="wp-block-image size-large"><a href="{full}"><img src="{src}" alt="" '
            f'class="wp-image-{attachment_id}"/></a></figure>\n'
            f'<!-- /wp:image -->\n\n'
            f'<!-- wp:paragraph -->\n<p>Text around the image, and a link to '
            f'<a href="{full}">the original</a>.</p>\n<!-- /wp:paragraph -->\n\n'
            # Markup pasted or written by the classic editor/page builders: srcset stored as is.
            f'<!-- wp:html -->\n<img src="{src}" srcset="{srcset}" '
            f'sizes="(max-width: {w}px) 100vw, {w}px" width="{w}" height="{h}" alt="explicit srcset" />\n'
            f'<!-- /wp:html -->'
        )
        return self.rest("POST", "/wp-json/wp/v2/posts",
                         {"title": title, "status": "publish", "content": content,
                          "featured_media": attachment_id})

    def library(self):
        form = urllib.parse.urlencode({
            "action": "query-attachments", "query[orderby]": "date", "query[order]": "DESC",
            "query[posts_per_page]": "40", "query[paged]": "1",
        }).encode()
        return self.request("POST", "/wp-admin/admin-ajax.php", form,
                            {"Content-Type": "application/x-www-form-urlencoded"})


# ---------------------------------------------------------------------- helpers
IMG_RE = re.compile(r"<img\b[^>]*>", re.S)


def page_images(html):
    out = []
    for tag in IMG_RE.findall(html):
        attrs = dict((k.lower(), v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', tag))
        out.append({"tag": tag, "src": attrs.get("src"), "srcset": attrs.get("srcset"),
                    "sizes": attrs.get("sizes"), "class": attrs.get("class")})
    return out


def make_jpeg(out, width=2000, height=1500, seed=1):
    subprocess.run(["php", os.path.join(HERE, "make-jpeg.php"), out, str(width), str(height),
                    str(seed)], check=True, stdout=subprocess.DEVNULL)
    return out


def upload(wp, via, path, name=None):
    if via == "async":
        return wp.upload_async(path, name)
    if via == "rest":
        return wp.upload_rest(path, name)
    if via == "rest-raw":
        return wp.upload_rest_raw(path, name)
    raise SystemExit(f"unknown --via {via}")


def upload_urls(via, doc):
    """The attachment URL and the size URLs from an upload answer."""
    if via == "async":
        data = doc.get("data", {})
        sizes = data.get("sizes", {})
        return data.get("id"), data.get("url"), {k: v.get("url") for k, v in sizes.items()}
    sizes = doc.get("media_details", {}).get("sizes", {})
    return doc.get("id"), doc.get("source_url"), {k: v.get("source_url") for k, v in sizes.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["make-jpeg", "upload", "post", "page", "library", "media",
                                        "scenario", "login"])
    ap.add_argument("--base", help="base URL of WordPress or of the proxy in front of it")
    ap.add_argument("--state", default=os.path.join(
        os.environ.get("OFFLOAD_E2E_DIR", "/tmp/offload-e2e"), "wordpress", "wordpress.env"))
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--host", help="Host header to send")
    ap.add_argument("--forwarded-proto", help="X-Forwarded-Proto to send (e.g. https)")
    ap.add_argument("--file", help="file to upload (default: a generated 2000x1500 JPEG)")
    ap.add_argument("--name", help="file name to give WordPress (default: the file's)")
    ap.add_argument("--via", default="async", choices=["async", "rest", "rest-raw"])
    ap.add_argument("--attachment-id", type=int)
    ap.add_argument("--title", help="post title (default: one naming the attachment)")
    ap.add_argument("--url", help="page URL for `page`")
    ap.add_argument("--out", help="output file for make-jpeg")
    ap.add_argument("--width", type=int, default=2000)
    ap.add_argument("--height", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--uploads-dir", help="scenario: check the generated files on disk here")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--login", action="store_true", help="page: log in first (wp-admin pages)")
    ap.add_argument("--raw-out", help="upload/media/library/page: also write the answer's body, "
                    "byte for byte, to this file")
    a = ap.parse_args()

    if a.command == "make-jpeg":
        out = a.out or f"/tmp/offload-e2e-{os.getpid()}.jpg"
        make_jpeg(out, a.width, a.height, a.seed if a.seed is not None else 1)
        print(json.dumps({"file": out, "size": os.path.getsize(out),
                          "width": a.width, "height": a.height}))
        return 0

    state = read_state(a.state)
    base = a.base or state.get("WP_URL")
    if not base:
        raise SystemExit("--base is required (no state file found)")
    user = a.user or os.environ.get("WP_ADMIN_USER") or state.get("WP_ADMIN_USER") or "admin"
    password = a.password or os.environ.get("WP_ADMIN_PASSWORD") or \
        state.get("WP_ADMIN_PASSWORD") or "offload-test-pw"
    wp = WP(base, user, password, a.host, a.forwarded_proto, a.timeout)

    def save_raw(r):
        if a.raw_out:
            with open(a.raw_out, "wb") as f:
                f.write(r.body)

    if a.command == "page":
        if a.login:
            wp.login()
        r = wp.request("GET", a.url or "/")
        save_raw(r)
        print(json.dumps({"status": r.status, "content_type": r.content_type, "url": r.url,
                          "images": page_images(r.text())}, indent=1))
        return 0 if r.status == 200 else 1

    wp.login()
    if a.command == "login":
        print(json.dumps({"logged_in": True, "cookies": sorted(c.name for c in wp.jar)}))
        return 0

    tmpfile = None
    if a.command in ("upload", "scenario") and not a.file:
        seed = a.seed if a.seed is not None else int(time.time() * 1000) % 100000
        tmpfile = make_jpeg(f"/tmp/offload-e2e-{os.getpid()}-{seed}.jpg", a.width, a.height, seed)
        a.file = tmpfile
    try:
        if a.command == "upload":
            r = upload(wp, a.via, a.file, a.name)
            save_raw(r)
            out = r.summary()
            out["via"] = a.via
            if "json" in out:
                aid, url, sizes = upload_urls(a.via, out["json"])
                out.update({"id": aid, "attachment_url": url, "size_urls": sizes})
            print(json.dumps(out, indent=1))
            return 0 if r.status in (200, 201) and "json" in out else 1
        if a.command == "media":
            r = wp.media(a.attachment_id)
            save_raw(r)
            print(json.dumps(r.summary(), indent=1))
            return 0 if r.status == 200 else 1
        if a.command == "library":
            r = wp.library()
            save_raw(r)
            print(json.dumps(r.summary(), indent=1))
            return 0 if r.status == 200 else 1
        if a.command == "post":
            r = wp.create_post(a.attachment_id, a.title)
            out = r.summary()
            if r.status == 201:
                link = r.json()["link"]
                if a.host:  # the link names --host, which need not resolve: ask --base
                    link = urllib.parse.urlsplit(link)._replace(scheme="", netloc="").geturl()
                page = wp.request("GET", link)
                out["page"] = {"status": page.status, "url": page.url,
                               "images": page_images(page.text())}
            print(json.dumps(out, indent=1))
            return 0 if r.status == 201 else 1
        if a.command == "scenario":
            return scenario(wp, a)
    finally:
        if tmpfile and os.path.exists(tmpfile):
            os.unlink(tmpfile)
    return 2


def scenario(wp, a):
    """Upload three ways, post, render, list; check what a real site would show."""
    result = {"base": wp.base, "uploads": {}, "checks": {}}
    ok = True
    first_id = None
    for via in ("async", "rest", "rest-raw"):
        name = f"offload-{via}-{os.getpid()}.jpg"
        r = upload(wp, via, a.file, name)
        s = r.summary(parse_json=True)
        entry = {"status": r.status, "content_type": r.content_type}
        if "json" in s:
            aid, url, sizes = upload_urls(via, s["json"])
            entry.update({"id": aid, "attachment_url": url, "size_urls": sizes})
            first_id = first_id or aid
        else:
            entry["text"] = s.get("text")
            ok = False
        result["uploads"][via] = entry
        if a.uploads_dir and entry.get("attachment_url"):
            rel = entry["attachment_url"].split("/wp-content/uploads/", 1)[-1]
            stem, ext = os.path.splitext(os.path.join(a.uploads_dir, rel))
            expect = [stem + ext] + [f"{stem}-{d}{ext}" for d in
                                     ("150x150", "300x225", "768x576", "1024x768", "1536x1152")]
            missing = [p for p in expect if not os.path.isfile(p)]
            entry["files_on_disk"] = [p for p in expect if os.path.isfile(p)]
            entry["files_missing"] = missing
            ok = ok and not missing
    if first_id:
        r = wp.create_post(first_id, a.title)
        result["post"] = {"status": r.status}
        if r.status == 201:
            post = r.json()
            result["post"].update({"id": post["id"], "link": post["link"]})
            page = wp.request("GET", post["link"])
            imgs = page_images(page.text())
            result["page"] = {"status": page.status, "images": imgs}
            with_srcset = [i for i in imgs if i["srcset"] and f"wp-image-{first_id}" in (i["class"] or "")]
            result["checks"]["rendered_block_image_has_srcset"] = bool(with_srcset)
            ok = ok and bool(with_srcset)
        else:
            ok = False
    lib = wp.library()
    result["library"] = {"status": lib.status, "content_type": lib.content_type}
    try:
        doc = lib.json()
        result["library"]["count"] = len(doc.get("data", []))
        result["library"]["urls"] = [d.get("url") for d in doc.get("data", [])[:5]]
    except ValueError:
        ok = False
    result["ok"] = ok
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
