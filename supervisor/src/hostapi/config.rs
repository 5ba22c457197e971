//! `config`: the install's configuration (alga-runner addition; Alga gap: config never reached
//! the guest).

use alga_shared::protocol::HostReply;

use super::HostContext;

pub fn get(ctx: &HostContext, key: &str) -> HostReply {
    HostReply::ConfigValue(ctx.config.get(key).cloned())
}

pub fn list(ctx: &HostContext) -> HostReply {
    HostReply::ConfigEntries(ctx.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

#[cfg(test)]
mod tests {
    use super::super::tests::ctx;
    use super::*;

    #[test]
    fn reads_the_install_config() {
        let c = ctx(&[]);
        assert_eq!(get(&c, "greeting"), HostReply::ConfigValue(Some("hello".into())));
        assert_eq!(get(&c, "absent"), HostReply::ConfigValue(None));
        assert_eq!(list(&c), HostReply::ConfigEntries(vec![("greeting".into(), "hello".into())]));
    }
}
