#!/usr/bin/env python3
"""Record what a real WordPress answers into tests/fixtures/wordpress/ (raw bodies as sent).

    python3 scripts/e2e/wordpress/capture_fixtures.py [--base http://127.0.0.1:18081] [--out DIR]

Needs a site from wordpress-up.sh. Bodies are written byte for byte (JSON escaping kept);
HTML pages are trimmed to the parts with upload URLs. Each fixture NAME.* has a NAME.headers
file with the status line and the headers that matter.
"""

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import wp_client  # noqa: E402

KEEP_HEADERS = ("content-type", "content-length", "location", "x-wp-total", "x-wp-totalpages",
                "link", "allow", "cache-control", "expires", "x-robots-tag", "x-content-type-options")


def save(out, name, r, body=None):
    with open(os.path.join(out, name), "wb") as f:
        f.write(r.body if body is None else body)
    base = name.rsplit(".", 1)[0]
    with open(os.path.join(out, base + ".headers"), "w", encoding="utf-8") as f:
        f.write(f"HTTP/1.1 {r.status}\n")
        for k, v in r.headers.items():
            if k.lower() in KEEP_HEADERS:
                f.write(f"{k}: {v}\n")
    print(f"  {name} ({r.status}, {len(r.body)} bytes)", file=sys.stderr)


def trim_html(html):
    """Keep <head> lines and body elements that mention uploads, plus the post content."""
    keep = []
    head = re.search(r"<head>(.*?)</head>", html, re.S)
    if head:
        for line in head.group(1).splitlines():
            if "wp-content" in line or "og:image" in line or "rel=\"canonical\"" in line:
                keep.append(line.strip())
    out = ["<!-- trimmed by capture_fixtures.py: <head> lines with wp-content, then the post -->",
           "<head>"] + keep + ["</head>"]
    body = html[head.end():] if head else html
    main = re.search(r'<main\b.*?</main>', body, re.S)
    if main:
        chunk = main.group(0)
        chunk = re.sub(r'<div class="wp-block-comments.*', "<!-- comments trimmed -->\n</main>", chunk, flags=re.S)
        out.append(chunk)
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="http://127.0.0.1:18081")
    ap.add_argument("--other-host", default="127.0.0.1:18080",
                    help="Host header for the page re-rendered as if reached through the proxy")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                                  "tests", "fixtures", "wordpress"))
    ap.add_argument("--file", default=None)
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    jpeg = a.file or wp_client.make_jpeg("/tmp/offload-fixture-photo.jpg", 2000, 1500, 7)

    wp = wp_client.WP(a.base, "admin", "offload-test-pw")
    wp.login()

    r = wp.request("GET", "/wp-admin/media-new.php")
    form = re.search(r'<form[^>]*id="file-form".*?</form>', r.text(), re.S)
    plup = re.search(r'var wpUploaderInit = .*?;\n', r.text(), re.S)
    snippet = (form.group(0) if form else "") + "\n<script>\n" + (plup.group(0) if plup else "") + "</script>\n"
    save(out, "media-new.form.html", r, snippet.encode())

    r = wp.upload_async(jpeg, "photo.jpg")
    save(out, "async-upload.response.json", r)
    aid = r.json()["data"]["id"]

    r = wp.upload_rest(jpeg, "photo-rest.jpg")
    save(out, "rest-media-multipart.response.json", r)
    r = wp.upload_rest_raw(jpeg, "photo-raw.jpg")
    save(out, "rest-media-raw.response.json", r)

    r = wp.request("GET", "/wp-admin/admin-ajax.php?action=rest-nonce")
    save(out, "rest-nonce.response.txt", r)

    r = wp.create_post(aid, "Offload fixture post")
    save(out, "rest-post-create.response.json", r)
    post = r.json()
    link = post["link"]

    anon = wp_client.WP(a.base, "admin", "offload-test-pw")
    page = anon.request("GET", link)
    save(out, "post-page.trimmed.html", page, trim_html(page.text()).encode())

    other = wp_client.WP(a.base, "admin", "offload-test-pw", host=a.other_host)
    page2 = other.request("GET", link.replace(a.base, ""))
    save(out, "post-page.other-host.trimmed.html", page2, trim_html(page2.text()).encode())
    other_https = wp_client.WP(a.base, "admin", "offload-test-pw", host=a.other_host,
                               forwarded_proto="https")
    page3 = other_https.request("GET", link.replace(a.base, ""))
    save(out, "post-page.other-host-https.trimmed.html", page3, trim_html(page3.text()).encode())

    r = wp.rest("GET", f"/wp-json/wp/v2/posts/{post['id']}")
    save(out, "rest-post-get.response.json", r)
    r = wp.rest("GET", f"/wp-json/wp/v2/media/{aid}")
    save(out, "rest-media-get.response.json", r)

    r = wp.library()
    save(out, "query-attachments.response.json", r)
    print(out)


if __name__ == "__main__":
    main()
