//! A storage round trip: put, get, compare-and-swap, list, delete. Answers a JSON report of what
//! each step returned, so a test can check every semantic at once.
include!("../../common/guest.rs");

use alga::extension::storage;
use alga::extension::types::StorageEntry;

fn entry(key: &str, value: &str, revision: Option<u64>) -> StorageEntry {
    StorageEntry { namespace: "ns".into(), key: key.into(), value: value.as_bytes().to_vec(), revision }
}

fn show<T: core::fmt::Debug, E: core::fmt::Debug>(r: &Result<T, E>) -> String {
    json_str(&match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("err {e:?}"),
    })
}

impl Guest for Fixture {
    fn handler(_request: ExecuteRequest) -> ExecuteResponse {
        let mut steps = Vec::new();
        let put = storage::put(&entry("a", "one", None));
        steps.push(("put", match &put {
            Ok(e) => json_str(&format!("ok rev {:?}", e.revision)),
            Err(e) => json_str(&format!("err {e:?}")),
        }));
        let got = storage::get("ns", "a");
        steps.push(("get", match &got {
            Ok(e) => json_str(&format!("ok {} rev {:?}", String::from_utf8_lossy(&e.value), e.revision)),
            Err(e) => json_str(&format!("err {e:?}")),
        }));
        let stale = storage::put(&entry("a", "two", Some(99)));
        steps.push(("cas_stale", show(&stale.map(|e| e.revision))));
        let cas = storage::put(&entry("a", "two", Some(1)));
        steps.push(("cas", show(&cas.map(|e| e.revision))));
        let _ = storage::put(&entry("b", "bee", None));
        let listed = storage::list_entries("ns", None);
        steps.push(("list", show(&listed.map(|v| v.into_iter().map(|e| e.key).collect::<Vec<_>>()))));
        let after = storage::list_entries("ns", Some("a"));
        steps.push(("list_after_a", show(&after.map(|v| v.into_iter().map(|e| e.key).collect::<Vec<_>>()))));
        steps.push(("delete", show(&storage::delete("ns", "a"))));
        steps.push(("delete_again", show(&storage::delete("ns", "a"))));
        steps.push(("get_missing", show(&storage::get("ns", "a").map(|_| ()))));
        let body: Vec<String> = steps.iter().map(|(k, v)| format!("{}:{}", json_str(k), v)).collect();
        respond(200, "application/json", format!("{{{}}}", body.join(",")).into_bytes())
    }
}
