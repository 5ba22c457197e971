//! `secrets`: the install's stored secrets overlaid by the envelope's, for this execution only.
//! Values are never logged; a missing key is `missing`.

use alga_shared::bindings::SecretError;
use alga_shared::protocol::HostReply;

use super::HostContext;

pub fn get(ctx: &HostContext, key: &str) -> HostReply {
    HostReply::Secret(ctx.secrets.0.get(key).cloned().ok_or(SecretError::Missing))
}

pub fn list_keys(ctx: &HostContext) -> HostReply {
    HostReply::SecretKeys(ctx.secrets.0.keys().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::super::tests::ctx;
    use super::*;
    use crate::secrets::SecretMap;

    #[test]
    fn values_and_missing_keys() {
        let mut c = ctx(&[]);
        c.secrets = SecretMap([("api_key".to_string(), "v".to_string())].into());
        assert_eq!(get(&c, "api_key"), HostReply::Secret(Ok("v".into())));
        assert_eq!(get(&c, "other"), HostReply::Secret(Err(SecretError::Missing)));
        assert_eq!(list_keys(&c), HostReply::SecretKeys(vec!["api_key".into()]));
    }
}
