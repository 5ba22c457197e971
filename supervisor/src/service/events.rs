//! `POST /v1/events` (service token): `{tenant, topic, payload}` runs the handler of every
//! install of the tenant subscribed to the topic (subscriptions come from the manifest's
//! `events` at install and go at uninstall). Answers at once with the execution ids; the
//! executions run in the background and are found in the execution log under those ids.
//!
//! The guest sees `POST /__alga/events/{topic}` with headers `x-alga-event-topic` and
//! `x-alga-event-handler` and the JSON body `{"topic", "handler", "payload"}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use alga_shared::bindings::HttpHeader;
use alga_shared::limits::LimitRequest;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Service;
use super::execute::{self, ExecuteCommand, Target, Trigger};
use crate::registry::new_id;
use crate::secrets::SecretMap;
use crate::service::problem::Problem;

#[derive(Debug, Deserialize)]
pub struct EventRequest {
    pub tenant: String,
    pub topic: String,
    #[serde(default)]
    pub payload: Value,
}

fn valid_topic(t: &str) -> bool {
    (1..=256).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'?' && b != b'#')
}

/// Starts every subscribed handler; returns their execution ids.
pub async fn publish(svc: &Arc<Service>, event: EventRequest, request_id: String) -> Result<Vec<String>, Problem> {
    super::installs::check_tenant(&event.tenant)?;
    if !valid_topic(&event.topic) {
        return Err(Problem::new(422, "invalid_event", "the event is not valid")
            .detail("$.topic: 1 to 256 printable characters without `/`, `?` or `#`"));
    }
    let mut ids = Vec::new();
    for sub in svc.registry.subscriptions(&event.tenant, &event.topic).await? {
        let Some(target) = execute::resolve_enabled(svc, &event.tenant, &sub.extension_id).await? else { continue };
        if target.install.install_id != sub.install_id {
            continue;
        }
        let execution_id = new_id();
        let cmd = command(&target, &event, &sub.handler, &request_id);
        let (svc2, id) = (svc.clone(), execution_id.clone());
        let trigger = Trigger::Event { topic: event.topic.clone(), handler: sub.handler.clone() };
        svc.core.spawner.handle.spawn(async move {
            match execute::run(&svc2, &target, cmd, trigger, Some(id.clone())).await {
                // Refused before running (a quota): no record carries this id; say so here.
                Ok(answer) if matches!(answer.status, 429 | 503) && answer.error.is_some() => {
                    tracing::warn!(execution_id = %id, error = ?answer.error, "an event handler was not admitted");
                }
                Ok(_) => {}
                Err(p) => tracing::error!(execution_id = %id, problem = %p, "an event handler could not run"),
            }
        });
        ids.push(execution_id);
    }
    tracing::info!(tenant = %event.tenant, topic = %event.topic, handlers = ids.len(), "event published");
    Ok(ids)
}

fn command(target: &Target, event: &EventRequest, handler: &str, request_id: &str) -> ExecuteCommand {
    let path = format!("/__alga/events/{}", event.topic);
    let body = json!({ "topic": event.topic, "handler": handler, "payload": event.payload });
    let header = |name: &str, value: &str| HttpHeader { name: name.into(), value: value.into() };
    ExecuteCommand {
        request_id: request_id.to_string(),
        tenant: event.tenant.clone(),
        extension: target.ext.id.clone(),
        install_id: Some(target.install.install_id.clone()),
        version_id: Some(target.install.version_id.clone()),
        content_hash: target.install.content_hash.clone(),
        method: "POST".into(),
        url: path.clone(),
        path,
        headers: vec![
            header("content-type", "application/json"),
            header("x-alga-event-topic", &event.topic),
            header("x-alga-event-handler", handler),
            header("x-alga-tenant", &event.tenant),
            header("x-alga-extension", &target.ext.id),
        ],
        body: Some(serde_json::to_vec(&body).unwrap_or_default()),
        config: BTreeMap::new(),
        limits: LimitRequest::default(),
        providers: None,
        user: None,
        secrets: SecretMap::default(),
        vault_envelope: None,
        egress_allowlist: None,
        idempotency_key: None,
    }
}
