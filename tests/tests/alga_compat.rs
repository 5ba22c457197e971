//! What an Alga host sends its runner, accepted in both modes (12-host-registry.md, "Both
//! modes"; issue 16, in progress): the service token as `x-runner-service-token`, content
//! hashes in any case with or without `sha256:`, and a `not_installed` that names what it
//! looked for (in the answer and in one log line).

use alga_tests::fixture_bytes;
use alga_tests::server::{ADMIN_TOKEN, SERVICE_TOKEN, Server, Signer, deploy, envelope, manifest};
use serde_json::{Value, json};

fn post(server: &Server, headers: &[(&str, &str)], envelope: &Value) -> (u16, Value) {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let body = serde_json::to_vec(envelope).unwrap();
    let answer = server.request("POST", "/v1/execute", None, &all, Some(&body));
    let json = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status, json)
}

#[test]
fn an_alga_hosts_token_header_any_hash_spelling_and_a_refusal_that_names_what_it_looked_for() {
    let signer = Signer::new();
    let server = Server::start(&signer);
    let d =
        deploy(&server, &signer, &manifest("com.example.alga", "1.0.0", &[]), &fixture_bytes("echo"), "t1", json!({}));
    let env = envelope("t1", &d.extension_id, &d.content_hash, "/");

    // The service token as Alga's host sends it.
    let (status, answer) = post(&server, &[("x-runner-service-token", SERVICE_TOKEN)], &env);
    assert_eq!((status, answer["status"].clone()), (200, json!(200)), "{answer}");
    let (status, answer) = post(&server, &[("x-runner-service-token", "not-the-token")], &env);
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = post(&server, &[], &env);
    assert_eq!(status, 401);
    assert!(answer["detail"].as_str().unwrap_or("").contains("x-runner-service-token"), "{answer}");
    // Only the service token comes that way: an admin route still wants its bearer token.
    let admin = server.request("GET", "/v1/extensions", None, &[("x-runner-service-token", ADMIN_TOKEN)], None);
    assert_eq!(admin.status, 401);

    // Upper case, without the prefix.
    let token = [("x-runner-service-token", SERVICE_TOKEN)];
    let shouting = d.content_hash.trim_start_matches("sha256:").to_ascii_uppercase();
    let (_, answer) = post(&server, &token, &envelope("t1", &d.extension_id, &shouting, "/"));
    assert_eq!(answer["status"], 200, "{answer}");

    // Refusals name what they looked for, and each logs one line.
    let (_, answer) = post(&server, &token, &envelope("t9", &d.extension_id, &d.content_hash, "/"));
    assert_eq!((answer["status"].clone(), answer["error"].clone()), (json!(404), json!("not_installed")));
    let detail = answer["detail"].as_str().unwrap();
    assert!(detail.contains("`t9`") && detail.contains(&d.extension_id), "{detail}");
    let other = format!("sha256:{}", "0".repeat(64));
    let (_, answer) = post(&server, &token, &envelope("t1", &d.extension_id, &other, "/"));
    let detail = answer["detail"].as_str().unwrap();
    assert!(detail.contains(&d.content_hash) && detail.contains(&other), "{detail}");
    let logged = server.log_text().lines().filter(|l| l.contains("execution refused: not_installed")).count();
    assert_eq!(logged, 2, "one line per refusal");
}
