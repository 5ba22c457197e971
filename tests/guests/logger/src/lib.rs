//! Logs `?lines=N` lines (default 3) at rotating levels, prints to stdout and stderr, and
//! answers with the context, user and config it can read.
include!("../../common/guest.rs");

use alga::extension::{config, context, logging, user};

impl Guest for Fixture {
    fn handler(request: ExecuteRequest) -> ExecuteResponse {
        let lines: u32 = query_param(&request.http.url, "lines").and_then(|v| v.parse().ok()).unwrap_or(3);
        let size: usize = query_param(&request.http.url, "size").and_then(|v| v.parse().ok()).unwrap_or(0);
        for i in 0..lines {
            let msg = if size > 0 { "x".repeat(size) } else { format!("line {i}") };
            match i % 3 {
                0 => logging::log_info(&msg),
                1 => logging::log_warn(&msg),
                _ => logging::log_error(&msg),
            }
        }
        println!("to stdout");
        eprintln!("to stderr");
        let ctx = context::get_context();
        let user = match user::get_user() {
            Ok(u) => json_str(&u.user_id),
            Err(e) => json_str(&format!("{e:?}")),
        };
        let greeting = config::get("greeting").map_or("null".into(), |g| json_str(&g));
        let body = format!(
            "{{\"tenant\":{},\"extension\":{},\"request_id\":{},\"user\":{},\"greeting\":{},\"config_entries\":{}}}",
            json_str(&ctx.tenant_id),
            json_str(&ctx.extension_id),
            ctx.request_id.as_deref().map_or("null".into(), json_str),
            user,
            greeting,
            config::list().len(),
        );
        respond(200, "application/json", body.into_bytes())
    }
}
