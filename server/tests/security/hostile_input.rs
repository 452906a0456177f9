//! Strict validation (docs/protocol.md "HTTP"): every route of the route table ([`larder_api::app::ROUTES`]),
//! fed malformed input (invalid UTF-8 in each path parameter, JSON that does
//! not parse, bodies without their `Content-Type` or over the limit),
//! answers the contract's JSON error with the status the input deserves,
//! never the framework's plain text.

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use serde_json::Value;

use crate::common::{Backend, TestApp, TestResponse, request};

/// One request of the walk and what it must get.
struct Probe {
    what: String,
    method: Method,
    uri: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    /// `None`: any status but a 5xx (`PUT nix-cache-info` is a no-op that
    /// accepts any body).
    status: Option<StatusCode>,
}

/// The path template with each `{param}` replaced by `fill(param)`.
fn fill(path: &str, mut fill: impl FnMut(&str) -> String) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(param) => fill(param),
                None => seg.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// Valid values, so only the part under test is wrong.
fn valid(param: &str) -> String {
    match param {
        "cache" => "walk".into(),
        "file" => "00000000000000000000000000000000.narinfo".into(),
        "name" => "pin".into(),
        "drv" => "00000000000000000000000000000000-walk.drv".into(),
        other => panic!("no valid value for {{{other}}}: extend the walk"),
    }
}

/// Routes whose body is JSON (the others stream NARs or narinfos).
fn takes_json(path: &str, method: &Method) -> bool {
    path.starts_with("/_api/v1/")
        && path != "/_api/v1/upload-path"
        && matches!(*method, Method::POST | Method::PATCH | Method::PUT)
}

fn probes() -> Vec<Probe> {
    let mut out = Vec::new();
    for (method, path) in larder_api::app::ROUTES {
        let method: Method = method.to_uppercase().parse().expect("route method");
        if path.contains('{') {
            // Invalid UTF-8 in each parameter in turn.
            for (i, _) in path.match_indices('{').enumerate() {
                let mut n = 0;
                let uri = fill(path, |p| {
                    n += 1;
                    if n - 1 == i {
                        if p == "file" {
                            "%ff%fe.narinfo".into()
                        } else {
                            "%ff".into()
                        }
                    } else {
                        valid(p)
                    }
                });
                out.push(Probe {
                    what: format!("{method} {path}: invalid UTF-8 in parameter {i}"),
                    method: method.clone(),
                    uri,
                    content_type: None,
                    body: Vec::new(),
                    status: Some(StatusCode::BAD_REQUEST),
                });
            }
        }
        let uri = fill(path, valid);
        if takes_json(path, &method) {
            let json = Some("application/json");
            for (what, content_type, body, status) in [
                ("JSON that does not parse", json, b"{not json".to_vec(), 400),
                ("JSON of the wrong shape", json, b"[1, 2, 3]".to_vec(), 400),
                ("no Content-Type", None, b"{}".to_vec(), 415),
                (
                    "a body over the limit",
                    json,
                    vec![b' '; 3 * 1024 * 1024],
                    413,
                ),
            ] {
                out.push(Probe {
                    what: format!("{method} {path}: {what}"),
                    method: method.clone(),
                    uri: uri.clone(),
                    content_type,
                    body,
                    status: Some(StatusCode::from_u16(status).expect("status")),
                });
            }
        } else if matches!(method, Method::PUT | Method::POST) {
            out.push(Probe {
                what: format!("{method} {path}: garbage body"),
                method: method.clone(),
                uri,
                content_type: Some("application/octet-stream"),
                body: b"garbage".to_vec(),
                status: None,
            });
        }
    }
    out
}

/// The contract's error shape, with `code` equal to the status.
fn check_json_error(resp: &TestResponse, method: &Method) -> Result<(), String> {
    let ctype = resp
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.starts_with("application/json") {
        return Err(format!("Content-Type {ctype:?}, body {:?}", resp.body));
    }
    if *method == Method::HEAD {
        return Ok(());
    }
    let body: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| format!("body is not JSON ({e}): {:?}", resp.body))?;
    let ok = body["code"] == resp.status.as_u16()
        && body["error"].as_str().is_some_and(|e| !e.is_empty())
        && body["message"].as_str().is_some_and(|m| !m.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!("not {{code, error, message}}: {body}"))
    }
}

async fn walk(app: &TestApp) {
    app.create_cache("walk", false).await;
    let token = app.root_token();
    let mut failures = Vec::new();
    let probes = probes();
    assert!(probes.len() > 30, "the walk covers the route table");
    for p in probes {
        let mut req = request(p.method.clone(), &p.uri, Some(&token));
        if let Some(ct) = p.content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let resp = app
            .send(req.body(Body::from(p.body)).expect("request"))
            .await;
        let status_ok = match p.status {
            Some(s) => resp.status == s,
            None => !resp.status.is_server_error(),
        };
        if !status_ok {
            failures.push(format!(
                "{}: status {} (want {:?}), body {:?}",
                p.what, resp.status, p.status, resp.body
            ));
        } else if resp.status.is_client_error()
            && let Err(e) = check_json_error(&resp, &p.method)
        {
            failures.push(format!("{}: {e}", p.what));
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad answers:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_route_answers_bad_input_with_json_errors() {
    let app = TestApp::new(Backend::Sqlite).await;
    walk(&app).await;
    app.teardown().await;
}
