//! `user` and `user-v2`: the end user the host application named for this request.

use alga_shared::bindings::{UserData, UserDataV2, UserError};
use alga_shared::protocol::HostReply;
use serde::{Deserialize, Serialize};

use super::HostContext;

/// The end user, as the envelope's `user` object or the gateway's user headers give it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub user_id: String,
    pub user_email: String,
    pub user_name: String,
    pub user_type: String,
    pub client_name: String,
    pub client_id: Option<String>,
    pub additional_fields: Vec<(String, String)>,
}

pub fn get(ctx: &HostContext) -> HostReply {
    HostReply::User(match &ctx.user {
        Some(u) => Ok(UserData {
            tenant_id: ctx.tenant_id.clone(),
            client_name: u.client_name.clone(),
            user_id: u.user_id.clone(),
            user_email: u.user_email.clone(),
            user_name: u.user_name.clone(),
            user_type: u.user_type.clone(),
        }),
        None => Err(UserError::NotAvailable),
    })
}

pub fn get_v2(ctx: &HostContext) -> HostReply {
    HostReply::UserV2(match &ctx.user {
        Some(u) => Ok(UserDataV2 {
            tenant_id: ctx.tenant_id.clone(),
            client_name: u.client_name.clone(),
            user_id: u.user_id.clone(),
            user_email: u.user_email.clone(),
            user_name: u.user_name.clone(),
            user_type: u.user_type.clone(),
            client_id: u.client_id.clone(),
            additional_fields: u.additional_fields.clone(),
        }),
        None => Err(UserError::NotAvailable),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::ctx;
    use super::*;

    #[test]
    fn absent_user_is_not_available() {
        assert_eq!(get(&ctx(&[])), HostReply::User(Err(UserError::NotAvailable)));
        assert_eq!(get_v2(&ctx(&[])), HostReply::UserV2(Err(UserError::NotAvailable)));
    }

    #[test]
    fn present_user_is_answered_with_the_tenant() {
        let mut c = ctx(&[]);
        c.user = Some(UserInfo { user_id: "u1".into(), client_id: Some("c9".into()), ..UserInfo::default() });
        match get_v2(&c) {
            HostReply::UserV2(Ok(u)) => {
                assert_eq!(u.user_id, "u1");
                assert_eq!(u.tenant_id, "t1");
                assert_eq!(u.client_id.as_deref(), Some("c9"));
            }
            other => panic!("{other:?}"),
        }
    }
}
