//! The service's ground floor: probes, the seed's hello, JSON errors, the spec.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::helpers::{ToggleProxy, json, spawn_app, spawn_app_with};
use crate::session::session;

async fn hello_answers_the_seed_greeting() {
    let app = spawn_app().await;
    let (status, body) = json(app.get("/tests/hello").await).await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"Hello": "World!"}));
}

async fn health_answers_200_while_the_process_is_up() {
    let app = spawn_app().await;
    let (status, body) = json(app.get("/health").await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

async fn wait_for_ready_status(app: &crate::helpers::TestApp, expected: u16) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = json(app.get("/ready").await).await;
        if status == expected {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready stayed {status} ({body}) instead of becoming {expected}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ready_follows_the_database_away_and_back_without_a_restart() {
    let proxy = ToggleProxy::start(session().mongo_address.clone()).await;
    let app = spawn_app_with(|settings| {
        settings.mongo.uri = format!("mongodb://{}/?directConnection=true", proxy.address).into();
    })
    .await;
    let (status, body) = json(app.get("/ready").await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));

    proxy.cut();
    let body = wait_for_ready_status(&app, 503).await;
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("MongoDB")),
        "{body}"
    );
    let (status, _) = json(app.get("/health").await).await;
    assert_eq!(status, 200, "liveness does not depend on the database");

    proxy.restore();
    let body = wait_for_ready_status(&app, 200).await;
    assert_eq!(body["status"], "ready");
}

async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let (status, body) = json(app.get("/no/such/route").await).await;
    assert_eq!((status, body["message"].as_str()), (404, Some("Not found")));
    let response = app
        .http
        .delete(app.url("/tests/hello"))
        .send()
        .await
        .unwrap();
    let (status, body) = json(response).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (405, Some("Method not allowed"))
    );
}

async fn bodies_over_the_limit_get_413_json() {
    let app = spawn_app_with(|settings| settings.http.body_limit_bytes = 1024).await;
    let oversized = vec![b'x'; 1025];
    let response = app
        .http
        .post(app.url("/tests/hello"))
        .body(oversized.clone())
        .send()
        .await
        .unwrap();
    let (status, body) = json(response).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (413, Some("Request body is too large"))
    );

    // Chunked, without Content-Length: the limit still holds.
    let stream = futures_util::stream::iter(
        oversized
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = app
        .http
        .post(app.url("/tests/hello"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let (status, _) = json(response).await;
    assert_eq!(status, 413);

    // A bodiless GET without Content-Length is not refused (poem's SizeLimit would say 411).
    let (status, _) = json(app.get("/tests/hello").await).await;
    assert_eq!(status, 200);
}

async fn the_default_body_limit_is_64_kib() {
    assert_eq!(
        crate::helpers::testing_settings().http.body_limit_bytes,
        64 * 1024
    );
}

async fn docs_and_spec_are_served() {
    let app = spawn_app().await;
    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), 200);
    let page = docs.text().await.unwrap();
    assert!(page.contains("swagger"));

    let document = app.get("/openapi.json").await.text().await.unwrap();
    assert!(
        page.contains(&document),
        "Swagger UI shows the served document"
    );
    let spec: serde_json::Value = serde_json::from_str(&document).unwrap();
    assert_eq!(spec["info"]["title"], "allot");
    assert!(spec["paths"]["/tests/hello"]["get"].is_object());

    let served = app.get("/openapi.yaml").await.text().await.unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.yaml"))
            .unwrap();
    assert!(
        served == committed,
        "the running service's spec differs from openapi/openapi.yaml; \
         regenerate it with `cargo run --quiet -- openapi > openapi/openapi.yaml`"
    );
}

async fn each_test_app_gets_a_database_of_its_own_that_the_session_drops() {
    let (first, second) = (spawn_app().await, spawn_app().await);
    assert_ne!(first.database.name(), second.database.name());
    for app in [&first, &second] {
        assert!(app.database.name().starts_with(&session().database_prefix));
        app.database
            .collection::<mongodb::bson::Document>("marker")
            .insert_one(mongodb::bson::doc! { "written_by": "a test" })
            .await
            .unwrap();
    }
    // The session's teardown drops these and fails the run if any is left.
    let names = session().client().list_database_names().await.unwrap();
    assert!(names.iter().any(|name| name == first.database.name()));
}

/// Every file of `tests/api/` is a test module of the harness (listed in
/// `main.rs`) or part of the harness, so that no file of tests is silently
/// left out of the build.
async fn every_file_of_the_api_tests_is_a_module_of_the_harness() {
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api");
    let mut files: Vec<String> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "rs"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut modules: Vec<String> = crate::TEST_MODULES
        .iter()
        .chain(crate::HARNESS)
        .map(|module| module.to_string())
        .collect();
    modules.sort();
    assert_eq!(files, modules);
}

/// The README is the map of the repository: each of its relative links (and
/// those of `bench/README.md` and of every markdown file under `docs/`) names
/// a file or folder that exists, and a `#fragment` into a markdown file names
/// one of its headings.
async fn every_relative_link_in_the_readme_and_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documents = vec![root.join("README.md"), root.join("bench/README.md")];
    markdown_files_under(&root.join("docs"), &mut documents);
    let readme = root.join("README.md");
    let mut broken = Vec::new();
    let mut readme_links = 0;
    for document in &documents {
        let text = std::fs::read_to_string(document)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", document.display()));
        let shown = document.strip_prefix(root).unwrap_or(document).display();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            if *document == readme {
                readme_links += 1;
            }
            if let Err(problem) = check_link(root, document, &target) {
                broken.push(format!("{shown}: ({target}) {problem}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{} broken relative link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
    assert!(
        readme_links >= 10,
        "found only {readme_links} relative links in README.md: is the link parser broken?"
    );
}

/// Every `.md` file under `directory`, at any depth.
fn markdown_files_under(directory: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(directory)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", directory.display()));
    for entry in entries {
        let path = entry.expect("a readable directory entry").path();
        if path.is_dir() {
            markdown_files_under(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "md") {
            found.push(path);
        }
    }
}

/// The targets of a markdown text's inline links and images (`[text](target)`)
/// and link definitions (`[name]: target`), outside code blocks and code spans.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    // The text with code removed; a code span may continue on the next line,
    // but not past a paragraph's end.
    let mut prose = String::new();
    let mut in_block = false;
    let mut in_span = false;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_block = !in_block;
            in_span = false;
            continue;
        }
        if in_block {
            continue;
        }
        if trimmed.is_empty() {
            in_span = false;
        }
        if let Some(rest) = trimmed.strip_prefix('[')
            && let Some((_, target)) = rest.split_once("]: ")
            && let Some(target) = target.split_whitespace().next()
        {
            targets.push(unbracketed(target));
        }
        for character in line.chars() {
            if character == '`' {
                in_span = !in_span;
            } else if !in_span {
                prose.push(character);
            }
        }
        prose.push('\n');
    }
    let mut rest = prose.as_str();
    while let Some(start) = rest.find("](") {
        rest = &rest[start + 2..];
        let end = rest
            .find(|character: char| character == ')' || character.is_whitespace())
            .unwrap_or(rest.len());
        targets.push(unbracketed(&rest[..end]));
        rest = &rest[end..];
    }
    targets
}

/// A link target without the angle brackets it may be written in.
fn unbracketed(target: &str) -> String {
    target
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned()
}

/// Whether `target`, a relative link in `document`, names an existing file or
/// folder (relative to the document, or to the repository when it starts
/// with `/`) and, with a `#fragment` into a markdown file, one of its headings.
fn check_link(root: &Path, document: &Path, target: &str) -> Result<(), String> {
    let (path, fragment) = match target.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        document.to_path_buf()
    } else if let Some(from_root) = path.strip_prefix('/') {
        root.join(from_root)
    } else {
        document.parent().unwrap_or(root).join(path)
    };
    if target.is_empty() || !file.exists() {
        return Err("names no file".to_owned());
    }
    let Some(fragment) = fragment else {
        return Ok(());
    };
    if file.extension().is_none_or(|extension| extension != "md") {
        return Ok(());
    }
    let text = std::fs::read_to_string(&file).map_err(|error| error.to_string())?;
    let anchors = heading_anchors(&text);
    if anchors.iter().any(|anchor| anchor == fragment) {
        Ok(())
    } else {
        Err(format!("names no heading of {}", file.display()))
    }
}

/// The anchors GitHub gives a markdown text's `#` headings: lower case,
/// spaces as `-`, punctuation other than `-` and `_` dropped, and `-1`, `-2`,
/// ... after a repeated one.
fn heading_anchors(markdown: &str) -> Vec<String> {
    let mut anchors = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut in_block = false;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_block = !in_block;
            continue;
        }
        let level = line.len() - line.trim_start_matches('#').len();
        if in_block || level == 0 || level > 6 || !line[level..].starts_with(' ') {
            continue;
        }
        let title = line[level..].trim().trim_end_matches('#').trim_end();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter_map(|character| match character {
                ' ' => Some('-'),
                '-' | '_' => Some(character),
                character if character.is_alphanumeric() => Some(character),
                _ => None,
            })
            .collect();
        let repeats = seen.iter().filter(|earlier| **earlier == slug).count();
        anchors.push(if repeats == 0 {
            slug.clone()
        } else {
            format!("{slug}-{repeats}")
        });
        seen.push(slug);
    }
    anchors
}

/// This module's tests, in the order the harness lists them.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    trials!(foundation: [
        hello_answers_the_seed_greeting,
        health_answers_200_while_the_process_is_up,
        ready_follows_the_database_away_and_back_without_a_restart,
        unknown_routes_and_methods_get_json_errors,
        bodies_over_the_limit_get_413_json,
        the_default_body_limit_is_64_kib,
        docs_and_spec_are_served,
        each_test_app_gets_a_database_of_its_own_that_the_session_drops,
        every_relative_link_in_the_readme_and_docs_resolves,
        every_file_of_the_api_tests_is_a_module_of_the_harness,
    ])
}
