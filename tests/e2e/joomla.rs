//! The `joomla` preset against `tests/apps/joomla-like` (PHP's built-in server, which comes
//! with the packages `scripts/e2e/wordpress-up.sh` installs; skipped or required like the
//! WordPress tests), storing into the in-process S3 server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::header;
use offload::store::{PutOptions, Store};
use tokio::process::Child;

use crate::support::php::{self, PUBLIC_BASE, bucket_objects, repo_root, sha256};

/// The joomla-like app on a free port, its images in a temp dir; killed on drop.
struct JoomlaLike {
    addr: SocketAddr,
    images: tempfile::TempDir,
    _child: Child,
}

async fn start_app() -> JoomlaLike {
    let images = tempfile::tempdir().unwrap();
    let root = repo_root().join("tests/apps/joomla-like");
    let (addr, child) = php::built_in_server(
        &root,
        Some(&root.join("router.php")),
        &[("JOOMLA_LIKE_IMAGES", images.path().as_os_str())],
    )
    .await;
    JoomlaLike {
        addr,
        images,
        _child: child,
    }
}

fn jpeg(seed: u8) -> Vec<u8> {
    // Not a decodable JPEG, but the app only stores bytes; the magic number sets the type.
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0];
    v.extend((0..50_000u32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    v
}

/// Standard base64 with padding (what Joomla's media manager sends).
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joomla_uploads_reach_the_store_and_pages_point_at_it() {
    if !php::enabled("joomla::uploads") {
        return;
    }
    let app = start_app().await;
    let s3 = php::s3_server().await;
    let proxy = php::offload("joomla", app.addr, &s3, "").await;
    let http = crate::support::client();

    // The media page: a session cookie and the form token.
    let page = http
        .get(proxy.url("/administrator/index.php?option=com_media"))
        .send()
        .await
        .unwrap();
    let cookie = page.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = page.text().await.unwrap();
    let token = html
        .split("\"csrf.token\":\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("csrf.token in the page")
        .to_string();

    // Joomla 3, the JSON uploader: mirror mode stores the file under its URL's key and the
    // answer names the bucket.
    let j3 = jpeg(3);
    let form = reqwest::multipart::Form::new().part(
        "Filedata",
        reqwest::multipart::Part::bytes(j3.clone())
            .file_name("j3.jpg")
            .mime_str("image/jpeg")
            .unwrap(),
    );
    let answer = http
        .post(proxy.url(&format!(
            "/administrator/index.php?option=com_media&task=file.upload&tmpl=component&format=json&{token}=1"
        )))
        .header(header::COOKIE, &cookie)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer = answer.text().await.unwrap();
    assert!(
        answer.contains(r#""location":"http:\/\/cdn.test.invalid\/bucket\/images\/j3.jpg""#),
        "{answer}"
    );
    assert_eq!(std::fs::read(app.images.path().join("j3.jpg")).unwrap(), j3);
    let bucket = bucket_objects(&s3).await;
    assert_eq!(
        bucket.get("images/j3.jpg"),
        Some(&sha256(&j3)),
        "{bucket:#?}"
    );

    // Joomla 3, the media manager form (Filedata[], 303): the file is in the store.
    let j3_form = jpeg(4);
    let form = reqwest::multipart::Form::new()
        .text("folder", "stories")
        .part(
            "Filedata[]",
            reqwest::multipart::Part::bytes(j3_form.clone())
                .file_name("j3-form.jpg")
                .mime_str("image/jpeg")
                .unwrap(),
        );
    let answer = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(proxy.url(&format!(
            "/administrator/index.php?option=com_media&task=file.upload&tmpl=component&{token}=1"
        )))
        .header(header::COOKIE, &cookie)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303);
    assert_eq!(
        answer.headers()[header::LOCATION],
        format!(
            "http://{}/administrator/index.php?option=com_media&folder=stories",
            proxy.addr
        )
    );
    let bucket = bucket_objects(&s3).await;
    assert!(
        bucket.values().any(|h| *h == sha256(&j3_form)),
        "the form's file is in the store: {bucket:#?}"
    );

    // Joomla 4, JSON + base64: passes through to the app; origin pull brings the file to the
    // store once a page names it, and a later page points at the bucket.
    let j4 = jpeg(5);
    let body = serde_json::json!({
        token.as_str(): "1",
        "name": "j4.jpg",
        "content": base64(&j4),
    });
    let answer = http
        .post(proxy.url(
            "/administrator/index.php?option=com_media&format=json&task=api.files&path=local-images:/",
        ))
        .header(header::COOKIE, &cookie)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    assert_eq!(std::fs::read(app.images.path().join("j4.jpg")).unwrap(), j4);
    let article = http
        .get(proxy.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(article.contains("images/j4.jpg"), "{article}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bucket = bucket_objects(&s3).await;
        if let Some(h) = bucket.get("images/j4.jpg") {
            assert_eq!(*h, sha256(&j4));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "origin pull of images/j4.jpg: {bucket:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let article = http
        .get(proxy.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The link the media manager handed out (absolute) points at the bucket.
    assert!(
        article.contains(&format!("<a href=\"{PUBLIC_BASE}images/j4.jpg\">")),
        "{article}"
    );

    // A file only the store has is served by offload.
    let only = jpeg(6);
    let bytes = bytes::Bytes::from(only.clone());
    s3.target()
        .store()
        .await
        .put(
            "images/only-in-store.jpg",
            Box::pin(futures_util::stream::once(async move { Ok(bytes) })),
            PutOptions::default(),
        )
        .await
        .unwrap();
    assert!(!app.images.path().join("only-in-store.jpg").exists());
    let served = http
        .get(proxy.url("/images/only-in-store.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.bytes().await.unwrap().to_vec(), only);
}
