//! A real WordPress (Debian's 6.1, from `scripts/e2e/wordpress-up.sh`, two PHP web servers with
//! separate uploads folders sharing one database) behind offload with `preset = "wordpress"`,
//! storing into the in-process S3 server. Requests are made the way a browser makes them, by
//! `scripts/e2e/wp_client.py` against offload's address. Skipped (with a message) unless
//! `OFFLOAD_TEST_WORDPRESS` names the state file; see `support::php`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use http::header;
use serde_json::Value;

use crate::support::Proxy;
use crate::support::php::{
    self, PUBLIC_BASE, WordPress, bucket_objects, file_sha256, sha256, unique_name,
};

/// The suffixes of the six files WordPress 6.1 makes of a 2000×1500 JPEG.
const SIZES: [&str; 6] = [
    "",
    "-150x150",
    "-300x225",
    "-768x576",
    "-1024x768",
    "-1536x1152",
];

const UPLOADS: &str = "wp-content/uploads/";

/// JSON's escaped spelling of `s` (every `/` as `\/`).
fn escaped(s: &str) -> String {
    s.replace('/', "\\/")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// One upload's outcome, as seen by the uploader.
struct Uploaded {
    id: u64,
    /// `2026/05/name` (no extension): where the files sit under the uploads folder.
    stem: String,
    /// The answer's body, byte for byte.
    raw: String,
    json: Value,
}

impl Uploaded {
    /// `stem + suffix + .jpg` for each of the six files.
    fn files(&self) -> Vec<String> {
        SIZES
            .iter()
            .map(|s| format!("{}{s}.jpg", self.stem))
            .collect()
    }
}

/// A fresh 2000×1500 JPEG (php-gd, seeded) in a temp dir.
async fn make_jpeg(wp: &WordPress, dir: &tempfile::TempDir, name: &str, seed: u32) -> PathBuf {
    let path = dir.path().join(format!("{name}.jpg"));
    let seed = seed.to_string();
    wp.client(&[
        "make-jpeg",
        "--out",
        path.to_str().unwrap(),
        "--seed",
        &seed,
    ])
    .await;
    path
}

/// Logs in and uploads `file` as `name.jpg` through `base` with wp_client's `via`
/// (`async`, `rest`, `rest-raw`), optionally with a Host header.
async fn upload(
    wp: &WordPress,
    base: &str,
    host: Option<&str>,
    file: &std::path::Path,
    name: &str,
    via: &str,
) -> Uploaded {
    let raw_path = file.with_extension(format!("{via}.answer"));
    let file_name = format!("{name}.jpg");
    let mut args = vec![
        "upload",
        "--base",
        base,
        "--file",
        file.to_str().unwrap(),
        "--name",
        &file_name,
        "--via",
        via,
        "--raw-out",
        raw_path.to_str().unwrap(),
    ];
    if let Some(host) = host {
        args.extend(["--host", host]);
    }
    let out = wp.client(&args).await;
    let expect_status = if via == "async" { 200 } else { 201 };
    assert_eq!(out["status"], expect_status, "{out:#}");
    let url = out["attachment_url"]
        .as_str()
        .expect("attachment URL")
        .to_string();
    let public_uploads = format!("{PUBLIC_BASE}{UPLOADS}");
    let rel = url
        .strip_prefix(&public_uploads)
        .unwrap_or_else(|| panic!("attachment URL {url} is not under {public_uploads}"));
    let stem = rel.strip_suffix(".jpg").expect(".jpg").to_string();
    assert!(
        stem.ends_with(name),
        "WordPress kept the name: {stem} vs {name}"
    );
    Uploaded {
        id: out["id"].as_u64().expect("attachment id"),
        stem,
        raw: std::fs::read_to_string(&raw_path).expect("raw answer"),
        json: out,
    }
}

/// The six files are in the bucket with WordPress's bytes; `bucket` is the whole bucket.
fn assert_in_bucket(
    wp: &WordPress,
    server: usize,
    up: &Uploaded,
    bucket: &BTreeMap<String, String>,
) {
    for file in up.files() {
        let disk = wp.uploads_dir(server).join(&file);
        let key = format!("{UPLOADS}{file}");
        assert_eq!(
            bucket.get(&key),
            Some(&file_sha256(&disk)),
            "object {key} equals {}; bucket: {bucket:#?}",
            disk.display()
        );
    }
}

/// The answer carries public URLs (escaped, as WordPress writes JSON) and no local ones.
fn assert_public_answer(up: &Uploaded, local_origins: &[String], must_name: &[&str]) {
    for suffix in must_name {
        let url = escaped(&format!("{PUBLIC_BASE}{UPLOADS}{}{suffix}.jpg", up.stem));
        assert!(up.raw.contains(&url), "answer names {url}:\n{}", up.raw);
    }
    for origin in local_origins {
        for spelling in [
            format!("{origin}/{UPLOADS}"),
            escaped(&format!("{origin}/{UPLOADS}")),
        ] {
            assert!(
                !up.raw.contains(&spelling),
                "a local uploads URL ({spelling}) remains:\n{}",
                up.raw
            );
        }
    }
}

/// offload (wordpress preset) in front of web server `i`.
async fn offload_for(
    wp: &WordPress,
    i: usize,
    s3: &crate::support::s3::S3Server,
    extra: &str,
) -> Proxy {
    php::offload("wordpress", wp.addr(i), s3, extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_uploader_puts_all_six_files_in_the_bucket_and_answers_public_urls() {
    let Some(wp) = WordPress::from_env("wordpress::media_uploader") else {
        return;
    };
    let started = Instant::now();
    let s3 = php::s3_server().await;
    let proxy = offload_for(&wp, 1, &s3, "").await;
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("async");
    let jpeg = make_jpeg(&wp, &dir, &name, 11).await;

    let up = upload(&wp, &proxy.url(""), None, &jpeg, &name, "async").await;

    // What WordPress wrote on its disk is what the bucket holds: six files, nothing else
    // (the teed copy of the upload was dropped as a duplicate of the original).
    let bucket = bucket_objects(&s3).await;
    assert_in_bucket(&wp, 1, &up, &bucket);
    assert_eq!(bucket.len(), 6, "{bucket:#?}");
    assert_eq!(
        bucket[&format!("{UPLOADS}{}.jpg", up.stem)],
        sha256(&std::fs::read(&jpeg).unwrap()),
        "the original is the uploaded file, byte for byte"
    );
    // The answer is text/plain JSON; async-upload names the original and four sizes.
    assert!(
        up.json["content_type"]
            .as_str()
            .unwrap()
            .starts_with("text/plain"),
        "{:#}",
        up.json
    );
    let origins = [format!("http://{}", proxy.addr), wp.url(1)];
    assert_public_answer(&up, &origins, &["", "-150x150", "-300x225", "-1024x768"]);
    let sizes = &up.json["size_urls"];
    for (size, suffix) in [
        ("thumbnail", "-150x150"),
        ("medium", "-300x225"),
        ("large", "-1024x768"),
        ("full", ""),
    ] {
        assert_eq!(
            sizes[size],
            format!("{PUBLIC_BASE}{UPLOADS}{}{suffix}.jpg", up.stem),
            "{size}"
        );
    }
    eprintln!("media uploader test: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_editor_rest_uploads_multipart_and_raw_put_all_sizes_in_the_bucket() {
    let Some(wp) = WordPress::from_env("wordpress::block_editor_rest") else {
        return;
    };
    let started = Instant::now();
    let s3 = php::s3_server().await;
    let proxy = offload_for(&wp, 1, &s3, "").await;
    let dir = tempfile::tempdir().unwrap();
    let origins = [format!("http://{}", proxy.addr), wp.url(1)];
    let mut uploads = Vec::new();
    for (via, seed) in [("rest", 21), ("rest-raw", 22)] {
        let name = unique_name(via);
        let jpeg = make_jpeg(&wp, &dir, &name, seed).await;
        let up = upload(&wp, &proxy.url(""), None, &jpeg, &name, via).await;
        // The REST answer lists every size, each with its public URL.
        assert_public_answer(&up, &origins, &SIZES);
        let sizes = up.json["size_urls"].as_object().expect("sizes");
        assert_eq!(sizes.len(), 6, "{sizes:#?}");
        for url in sizes.values() {
            let url = url.as_str().unwrap();
            assert!(
                url.starts_with(&format!("{PUBLIC_BASE}{UPLOADS}{}", up.stem)),
                "{url}"
            );
        }
        uploads.push(up);
    }
    let bucket = bucket_objects(&s3).await;
    for up in &uploads {
        assert_in_bucket(&wp, 1, up, &bucket);
    }
    assert_eq!(bucket.len(), 12, "{bucket:#?}");
    eprintln!("block editor test: {:?}", started.elapsed());
}

/// The page with the per-request values WordPress puts in it replaced: nonces (10 hex
/// characters after `nonce`, as in `"nonce":"…"` or `_wpnonce=…`).
fn normalise(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    let mut rest = page;
    while let Some(at) = rest.find("nonce") {
        let (head, tail) = rest.split_at(at + "nonce".len());
        out.push_str(head);
        // `nonce":"abcdef0123"` or `nonce="…"` or `_wpnonce=…`
        let skip = tail
            .char_indices()
            .take_while(|(_, c)| matches!(c, '"' | '\'' | ':' | '=' | ' '))
            .count();
        let value_len = tail[skip..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        if value_len == 10 {
            out.push_str(&tail[..skip]);
            out.push_str("NONCE");
            rest = &tail[skip + value_len..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_library_rest_and_wp_admin_through_offload_carry_public_urls() {
    let Some(wp) = WordPress::from_env("wordpress::posts_library_admin") else {
        return;
    };
    let started = Instant::now();
    let s3 = php::s3_server().await;
    let proxy = offload_for(&wp, 1, &s3, "").await;
    let site = format!("http://{}", proxy.addr);
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("post");
    let jpeg = make_jpeg(&wp, &dir, &name, 31).await;
    let up = upload(&wp, &proxy.url(""), None, &jpeg, &name, "async").await;
    let id = up.id.to_string();

    // The post is written as a site without offload wrote it: straight to WordPress, with
    // offload's Host, so its stored URLs name the site (offload's origin), not the bucket.
    let host = proxy.addr.to_string();
    let post = wp
        .client(&[
            "post",
            "--base",
            &wp.url(1),
            "--host",
            &host,
            "--attachment-id",
            &id,
        ])
        .await;
    let link = post["json"]["link"]
        .as_str()
        .expect("post link")
        .to_string();
    let path = link.strip_prefix(&site).expect("link on the site");

    let http = client();
    let via_offload = http.get(proxy.url(path)).send().await.unwrap();
    assert_eq!(via_offload.status(), 200);
    let via_offload = via_offload.text().await.unwrap();
    let direct = http
        .get(format!("{}{path}", wp.url(1)))
        .header(header::HOST, &host)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
    let direct = direct.text().await.unwrap();

    // The direct page names the uploads on the site; offload's names them on the bucket.
    let local = format!("{site}/{UPLOADS}");
    let public = format!("{PUBLIC_BASE}{UPLOADS}");
    let stem_url = format!("{local}{}", up.stem);
    assert!(direct.contains(&stem_url), "the page shows the image");
    let expected = direct
        .replace(&local, &public)
        .replace(&escaped(&local), &escaped(&public));
    assert!(
        !via_offload.contains(&local),
        "no local uploads URL remains"
    );
    // Every src, srcset candidate and href of the image: six files, all public.
    for file in up.files() {
        if direct.contains(&format!("{local}{file}")) {
            assert!(via_offload.contains(&format!("{public}{file}")), "{file}");
        }
    }
    let count = |s: &str, what: &str| s.matches(what).count();
    assert!(
        count(&via_offload, &public) >= 10,
        "src, srcset and href rewritten"
    );
    assert_eq!(count(&via_offload, &public), count(&direct, &local));
    assert_eq!(
        normalise(&via_offload),
        normalise(&expected),
        "nothing else on the page changed"
    );

    // The media library grid and the REST media item.
    let lib_raw = dir.path().join("library.json");
    let lib = wp
        .client(&[
            "library",
            "--base",
            &proxy.url(""),
            "--raw-out",
            lib_raw.to_str().unwrap(),
        ])
        .await;
    let item = lib["json"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"].as_u64() == Some(up.id))
        .expect("the upload is in the library")
        .clone();
    assert_eq!(item["url"], format!("{public}{}.jpg", up.stem));
    let lib_raw = std::fs::read_to_string(lib_raw).unwrap();
    assert!(lib_raw.contains(&escaped(&format!("{public}{}-150x150.jpg", up.stem))));
    // (Other tests' uploads share the database, not this test's bucket: theirs stay local.)
    assert!(
        !lib_raw.contains(&escaped(&format!("{local}{}", up.stem))),
        "{lib_raw}"
    );
    let media_raw = dir.path().join("media.json");
    let media = wp
        .client(&[
            "media",
            "--base",
            &proxy.url(""),
            "--attachment-id",
            &id,
            "--raw-out",
            media_raw.to_str().unwrap(),
        ])
        .await;
    assert_eq!(
        media["json"]["source_url"],
        format!("{public}{}.jpg", up.stem)
    );
    let media_raw = std::fs::read_to_string(media_raw).unwrap();
    for file in up.files() {
        assert!(
            media_raw.contains(&escaped(&format!("{public}{file}"))),
            "{file}"
        );
    }
    assert!(!media_raw.contains(&escaped(&local)), "{media_raw}");

    // wp-admin works through offload: log in, the dashboard with its menu, the library page.
    for (page, marker) in [
        ("/wp-admin/", "id=\"adminmenu\""),
        ("/wp-admin/upload.php", "wp-media-grid"),
    ] {
        let raw = dir.path().join("admin.html");
        let out = wp
            .client(&[
                "page",
                "--login",
                "--base",
                &proxy.url(""),
                "--url",
                page,
                "--raw-out",
                raw.to_str().unwrap(),
            ])
            .await;
        assert_eq!(out["status"], 200, "{page}");
        let html = std::fs::read_to_string(raw).unwrap();
        assert!(html.contains(marker), "{page} has {marker}");
        assert!(!html.contains("id=\"loginform\""), "{page}: logged in");
    }
    eprintln!("posts/library/admin test: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_a_file_uploaded_through_one_server_is_served_by_the_other() {
    let Some(wp) = WordPress::from_env("wordpress::scale_out") else {
        return;
    };
    assert!(
        wp.var("WP_SERVERS").parse::<usize>().unwrap() >= 2,
        "start WordPress with WP_SERVERS=2"
    );
    let started = Instant::now();
    let s3 = php::s3_server().await;
    // One public host name for both, as behind a load balancer without sticky sessions.
    let host = "www.site.test";
    let a = offload_for(&wp, 1, &s3, "").await;
    let b = offload_for(&wp, 2, &s3, "").await;
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("scale");
    let jpeg = make_jpeg(&wp, &dir, &name, 41).await;

    let up = upload(&wp, &a.url(""), Some(host), &jpeg, &name, "async").await;
    let uploaded_at = Instant::now();

    // Right after A's 2xx: B serves each of the six files from the bucket, though WP_2's
    // disk lacks them.
    let http = client();
    for file in up.files() {
        let on_2 = wp.uploads_dir(2).join(&file);
        assert!(!on_2.exists(), "{} is not on server 2", on_2.display());
        let response = http
            .get(b.url(&format!("/{UPLOADS}{file}")))
            .header(header::HOST, host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{file} through B");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "image/jpeg",
            "{file}"
        );
        let bytes = response.bytes().await.unwrap();
        assert_eq!(
            sha256(&bytes),
            file_sha256(&wp.uploads_dir(1).join(&file)),
            "{file}: B serves server 1's bytes"
        );
    }

    // A post made through A; B renders it with public URLs on its first request.
    let id = up.id.to_string();
    let post = wp
        .client(&[
            "post",
            "--base",
            &a.url(""),
            "--host",
            host,
            "--attachment-id",
            &id,
        ])
        .await;
    let link = post["json"]["link"].as_str().expect("post link");
    let path = link
        .strip_prefix(&format!("http://{host}"))
        .expect("link on the public host");
    let page = http
        .get(b.url(path))
        .header(header::HOST, host)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let public = format!("{PUBLIC_BASE}{UPLOADS}{}", up.stem);
    assert!(
        page.contains(&format!("{public}-1536x1152.jpg 1536w")),
        "B's srcset is public"
    );
    let local = format!("http://{host}/{UPLOADS}");
    assert!(
        !page.contains(&local),
        "no local uploads URL on B's page: {:?}",
        page.match_indices(&local)
            .map(|(i, _)| &page[i..(i + 120).min(page.len())])
            .collect::<Vec<_>>()
    );
    eprintln!(
        "scale-out test: {:?} (B served after A's 2xx within {:?})",
        started.elapsed(),
        uploaded_at.elapsed()
    );
}
