//! From module.toml to the machines' policies. Pure.

use std::collections::BTreeMap;
use tandem_config::{CheckerAction, CheckerKind, ModuleConfig, Preferred as CfgPreferred};
use tandem_machine::{FailAction, FarmPolicy, MirrorPolicy, Preferred};

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

fn resources(cfg: &ModuleConfig) -> BTreeMap<String, FailAction> {
    cfg.checkers
        .iter()
        .filter(|c| !matches!(c.kind, CheckerKind::Splitbrain { .. }))
        .map(|c| {
            let action = match c.action {
                Some(CheckerAction::Restart) => FailAction::Restart,
                Some(CheckerAction::Stopstart) => FailAction::StopStart,
                Some(CheckerAction::Wait) => FailAction::Wait,
                Some(CheckerAction::Stop) => FailAction::Stop,
                None => FailAction::Wait,
            };
            (c.name.clone(), action)
        })
        .collect()
}

fn loop_limit(cfg: &ModuleConfig) -> u32 {
    // 0 in module.toml means "no limit".
    if cfg.failover.loop_limit == 0 {
        u32::MAX
    } else {
        cfg.failover.loop_limit
    }
}

/// The module's splitbrain checker, if it has one.
pub fn splitbrain_checker(cfg: &ModuleConfig) -> Option<&tandem_config::Checker> {
    cfg.checkers.iter().find(|c| matches!(c.kind, CheckerKind::Splitbrain { .. }))
}

/// How long after losing its peer a primary may wait for a witness verdict newer than the loss:
/// one probe interval (the next round starts) plus one probe timeout (it ends) plus one
/// heartbeat timeout (the two nodes notice the loss up to that far apart).
pub fn witness_deadline(checker: &tandem_config::Checker, cfg: &ModuleConfig) -> std::time::Duration {
    checker.interval + checker.timeout + cfg.heartbeat.timeout
}

/// The mirror policy of `local`; None if `local` is not one of the module's two nodes.
pub fn mirror_policy(cfg: &ModuleConfig, local: &str, witness_checker_active: bool) -> Option<MirrorPolicy> {
    cfg.node(local)?;
    let peer = cfg.nodes.iter().find(|n| n.name != local)?;
    let mut p = MirrorPolicy::new(local, &peer.name);
    p.preferred = match &cfg.failover.preferred {
        CfgPreferred::Alone => Preferred::Alone,
        CfgPreferred::Last => Preferred::Last,
        CfgPreferred::Node(n) => Preferred::Node(n.clone()),
    };
    p.failover_default = cfg.failover.enabled;
    if let Some(c) = splitbrain_checker(cfg).filter(|_| witness_checker_active) {
        p.witness = true;
        p.witness_deadline_ms = ms(witness_deadline(c, cfg));
    }
    p.start_grace_ms = ms(cfg.heartbeat.timeout);
    p.loop_limit = loop_limit(cfg);
    p.loop_interval_ms = ms(cfg.failover.loop_interval);
    p.resources = resources(cfg);
    Some(p)
}

pub fn farm_policy(cfg: &ModuleConfig, local: &str) -> Option<FarmPolicy> {
    cfg.node(local)?;
    Some(FarmPolicy {
        local: local.into(),
        nodes: cfg.nodes.iter().map(|n| (n.name.clone(), n.power)).collect(),
        loop_limit: loop_limit(cfg),
        loop_interval_ms: ms(cfg.failover.loop_interval),
        resources: resources(cfg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn mirror_policy_from_the_shipped_example() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../app-modules/generic-mirror/module.toml");
        let cfg = tandem_config::load_module(&path).unwrap();
        let p = mirror_policy(&cfg, "n2", true).unwrap();
        assert_eq!((p.local.as_str(), p.peer.as_str()), ("n2", "n1"));
        assert_eq!(p.start_grace_ms, 1000);
        assert!(p.witness);
        // The example's splitbrain checker: default interval and timeout (1 s each) + 1 s heartbeat timeout.
        assert_eq!(p.witness_deadline_ms, 3000);
        assert_eq!(p.resources.get("vip"), Some(&FailAction::StopStart));
        assert!(!mirror_policy(&cfg, "n2", false).unwrap().witness);
        assert!(mirror_policy(&cfg, "n9", true).is_none());
    }
}
