//! `/openapi.json` describes every route the service has, with its methods, and nothing else:
//! checked against the route table in `supervisor/src/http/routes.rs`, so the two cannot drift.

use std::collections::BTreeSet;
use std::path::Path;

use alga_tests::server::{Server, Signer};

/// (path, method) of every route in routes.rs, paths in OpenAPI form (`{path:.*}` → `{path}`).
fn routes_in_code() -> BTreeSet<(String, String)> {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../supervisor/src/http/routes.rs"))
            .unwrap();
    let mut routes = BTreeSet::new();
    let normal = |p: &str| p.replace(":.*}", "}");
    for (i, _) in source.match_indices("resource(\"") {
        let rest = &source[i + "resource(\"".len()..];
        let Some((path, rest)) = rest.split_once('"') else { continue };
        let Some(methods) = rest.strip_prefix(", \"").and_then(|r| r.split_once('"')).map(|(m, _)| m) else { continue };
        for m in methods.split(',') {
            routes.insert((normal(path), m.trim().to_ascii_lowercase()));
        }
    }
    // The gateway takes any method on its two paths.
    let gateway = source.find("web::resource([").expect("the gateway's resource");
    let list = &source[gateway..source[gateway..].find("])").unwrap() + gateway];
    for path in list.split('"').skip(1).step_by(2) {
        for m in ["get", "post", "put", "patch", "delete"] {
            routes.insert((normal(path), m.to_string()));
        }
    }
    routes
}

#[test]
fn the_document_names_every_route_and_method_and_nothing_else() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let answer = server.request("GET", "/openapi.json", None, &[], None);
    assert_eq!(answer.status, 200);
    assert!(answer.header("content-type").unwrap_or("").starts_with("application/json"));
    let doc = answer.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let op = &item[method];
            assert!(op["summary"].is_string() && op["responses"].is_object(), "{method} {path} is described");
            documented.insert((path.clone(), method.clone()));
        }
    }
    let code = routes_in_code();
    assert!(code.len() > 25, "the route table was read: {code:?}");
    let missing: Vec<_> = code.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&code).collect();
    assert!(missing.is_empty(), "routes without a description in openapi.json: {missing:?}");
    assert!(extra.is_empty(), "openapi.json describes routes the service does not have: {extra:?}");
}
