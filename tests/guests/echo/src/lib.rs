//! Returns the request as JSON: method, url, headers, body (hex), and the execution context.
include!("../../common/guest.rs");

impl Guest for Fixture {
    fn handler(request: ExecuteRequest) -> ExecuteResponse {
        let http = &request.http;
        let headers: Vec<String> = http
            .headers
            .iter()
            .map(|h| format!("[{},{}]", json_str(&h.name), json_str(&h.value)))
            .collect();
        let body_hex = http.body.as_ref().map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>());
        let ctx = &request.context;
        let json = format!(
            "{{\"method\":{},\"url\":{},\"headers\":[{}],\"body_hex\":{},\"tenant\":{},\"extension\":{}}}",
            json_str(&http.method),
            json_str(&http.url),
            headers.join(","),
            body_hex.map_or("null".to_string(), |h| json_str(&h)),
            json_str(&ctx.tenant_id),
            json_str(&ctx.extension_id),
        );
        let mut response = respond(200, "application/json", json.into_bytes());
        response.headers.push(HttpHeader { name: "x-ext-echo".into(), value: "1".into() });
        response
    }
}
