//! `context`: who this execution runs for.

use alga_shared::bindings::ContextData;
use alga_shared::protocol::HostReply;

use super::HostContext;

pub fn get(ctx: &HostContext) -> HostReply {
    HostReply::Context(ContextData {
        request_id: ctx.request_id.clone(),
        tenant_id: ctx.tenant_id.clone(),
        extension_id: ctx.extension_id.clone(),
        install_id: ctx.install_id.clone(),
        version_id: ctx.version_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::ctx;
    use super::*;

    #[test]
    fn answers_the_execution_identity() {
        match get(&ctx(&[])) {
            HostReply::Context(d) => {
                assert_eq!(d.tenant_id, "t1");
                assert_eq!(d.install_id.as_deref(), Some("i1"));
                assert_eq!(d.request_id.as_deref(), Some("r1"));
            }
            other => panic!("{other:?}"),
        }
    }
}
