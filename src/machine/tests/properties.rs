//! Property tests over random event sequences on the two machines of a mirror, and on a farm.
//!
//! Checked after every step, by the simulation in `sim/`:
//! - two nodes that can hear each other are never both serving;
//! - a node never becomes primary without `primforce` while its copy lacks writes its peer holds
//!   (ground truth: the simulation writes on every serving node and replicates to a SECOND);
//!   promotions during a partition are exempt until a catch-up makes the copies identical again;
//! - every run of actions is well formed: no VIP taken twice or released while not held, every
//!   start hook closed by its stop hook before it runs again;
//! - the two machines always settle (no oscillation of views);
//! - with a witness (a splitbrain checker) and witnesses reachable exactly from the side of a
//!   split that is not cut off, two nodes never serve at the same time, even without hearing each
//!   other, whatever the timing of the probes.

mod sim;

use proptest::prelude::*;
use sim::{FarmSim, MirrorSim};
use tandem_machine::*;

#[derive(Debug, Clone)]
enum Step {
    Admin(usize, Admin),
    Kill(usize),
    PowerOn(usize),
    Cut,
    Heal,
    ReplicationBroken,
    ResyncDone(usize),
    ResyncFailed(usize),
    Resource(usize, &'static str, bool),
    Witness(usize, bool),
    HookFailed(usize),
    Advance(u64),
}

fn admin() -> impl Strategy<Value = Admin> {
    prop_oneof![
        6 => Just(Admin::Start),
        2 => Just(Admin::Stop),
        1 => Just(Admin::Restart),
        1 => Just(Admin::StopStart),
        2 => Just(Admin::Swap),
        3 => Just(Admin::Prim),
        3 => Just(Admin::Second { fullsync: false }),
        1 => Just(Admin::Second { fullsync: true }),
        1 => Just(Admin::PrimForce),
        1 => any::<bool>().prop_map(Admin::Failover),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let node = 0usize..2;
    prop_oneof![
        8 => (node.clone(), admin()).prop_map(|(i, a)| Step::Admin(i, a)),
        2 => node.clone().prop_map(Step::Kill),
        3 => node.clone().prop_map(Step::PowerOn),
        2 => Just(Step::Cut),
        3 => Just(Step::Heal),
        1 => Just(Step::ReplicationBroken),
        6 => node.clone().prop_map(Step::ResyncDone),
        1 => node.clone().prop_map(Step::ResyncFailed),
        3 => (node.clone(), prop_oneof![Just("app"), Just("disk"), Just("svc"), Just("fatal")], any::<bool>())
            .prop_map(|(i, r, up)| Step::Resource(i, r, up)),
        2 => (node.clone(), any::<bool>()).prop_map(|(i, b)| Step::Witness(i, b)),
        1 => node.clone().prop_map(Step::HookFailed),
        4 => (1u64..30_000).prop_map(Step::Advance),
    ]
}

fn policy() -> impl Strategy<Value = MirrorPolicy> {
    (
        prop_oneof![Just(Preferred::Alone), Just(Preferred::Last), Just(Preferred::Node("n1".into()))],
        any::<bool>(),
        any::<bool>(),
        1u32..4,
    )
        .prop_map(|(preferred, witness, failover, loop_limit)| {
            let mut p = MirrorPolicy::new("n1", "n2");
            p.preferred = preferred;
            p.witness = witness;
            p.failover_default = failover;
            p.loop_limit = loop_limit;
            p.resources = [
                ("app".to_string(), FailAction::Restart),
                ("disk".to_string(), FailAction::Wait),
                ("svc".to_string(), FailAction::StopStart),
                ("fatal".to_string(), FailAction::Stop),
            ]
            .into_iter()
            .collect();
            p
        })
}

fn run(sim: &mut MirrorSim, s: &Step) {
    sim.begin_step();
    match s.clone() {
        Step::Admin(i, a) => {
            let _ = sim.event(i, MirrorEvent::Admin(a));
        }
        Step::Kill(i) => sim.kill(i),
        Step::PowerOn(i) => sim.power_on(i),
        Step::Cut => sim.cut(),
        Step::Heal => sim.heal(),
        Step::ReplicationBroken => sim.replication_broken(),
        Step::ResyncDone(i) => sim.resync_done(i),
        Step::ResyncFailed(i) => {
            let _ = sim.event(i, MirrorEvent::ResyncFailed { reason: "reset".into() });
        }
        Step::Resource(i, r, up) => {
            let _ = sim.event(i, MirrorEvent::Resource { name: r.into(), up });
        }
        Step::Witness(i, b) => {
            let _ = sim.event(i, MirrorEvent::Witness { reachable: b });
        }
        Step::HookFailed(i) => {
            let _ = sim.event(i, MirrorEvent::HookFailed { hook: Hook::StartPrim, reason: "exit 1".into() });
        }
        Step::Advance(ms) => sim.advance(ms),
    }
    sim.check_invariants();
    sim.write();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, max_shrink_iters: 20_000, .. ProptestConfig::default() })]

    #[test]
    fn mirror_safety(policy in policy(), steps in prop::collection::vec(step(), 1..80)) {
        let mut sim = MirrorSim::new(&policy);
        for (k, s) in steps.iter().enumerate() {
            run(&mut sim, s);
            prop_assert!(sim.violations.is_empty(), "after step {} {:?}: {:?}", k + 1, s, sim.violations);
        }
    }

    /// Two nodes started normally and left alone converge to PRIM + SECOND (Ready): the rules make
    /// progress, not only stay safe.
    #[test]
    fn mirror_converges_after_admin_setup(policy in policy(), steps in prop::collection::vec(step(), 0..40)) {
        let mut sim = MirrorSim::new(&policy);
        for s in &steps {
            run(&mut sim, s);
        }
        // Repair everything, then start both and let catch-ups complete.
        sim.begin_step();
        sim.heal();
        sim.power_on(0);
        sim.power_on(1);
        for i in 0..2 {
            let _ = sim.event(i, MirrorEvent::Resource { name: "disk".into(), up: true });
            let _ = sim.event(i, MirrorEvent::Witness { reachable: true });
            let _ = sim.event(i, MirrorEvent::Admin(Admin::Failover(true)));
            let _ = sim.event(i, MirrorEvent::Admin(Admin::Start));
        }
        sim.advance(60_000);
        for round in 0..6 {
            if !sim.serving(0) && !sim.serving(1) {
                // Only the admin can choose (first start, unrelated or inconsistent copies): prim
                // where it is accepted, else primforce on the copy with the longest history.
                let prim_ok = (0..2).any(|i| sim.event(i, MirrorEvent::Admin(Admin::Prim)).is_ok());
                if !prim_ok {
                    let len = |i: usize| sim.nodes[i].disk.as_ref().map_or(0, |d| d.history.len());
                    let i = if len(1) > len(0) { 1 } else { 0 };
                    let _ = sim.event(i, MirrorEvent::Admin(Admin::PrimForce));
                }
            }
            for i in 0..2 {
                if sim.status(i).map(|s| s.state) == Some(State::Wait) {
                    let _ = sim.event(i, MirrorEvent::Admin(Admin::Second { fullsync: round > 0 }));
                }
                sim.resync_done(i);
            }
            sim.advance(11_000);
        }
        let states: Vec<_> = (0..2).map(|i| sim.status(i).unwrap().state).collect();
        prop_assert!(
            states.contains(&State::Prim) && states.contains(&State::Second),
            "did not converge: {:?} {:?}", states, (0..2).map(|i| sim.status(i)).collect::<Vec<_>>()
        );
        prop_assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    }
}

/// Steps of the witness model: a cut isolates one node (it loses its peer and the witnesses; the
/// other still reaches them); time passes in steps after which each node's probe reports what it
/// can reach, unless that probe is still hanging (`silent`).
#[derive(Debug, Clone)]
enum WStep {
    Admin(usize, Admin),
    Kill(usize),
    PowerOn(usize),
    Isolate(usize),
    Heal,
    ResyncDone(usize),
    Advance { ms: u64, silent: [bool; 2] },
}

fn witness_step() -> impl Strategy<Value = WStep> {
    let node = 0usize..2;
    // No primforce: the admin may always force a second primary on purpose.
    let admin = prop_oneof![
        4 => Just(Admin::Start),
        1 => Just(Admin::Stop),
        1 => Just(Admin::StopStart),
        1 => Just(Admin::Swap),
        3 => Just(Admin::Prim),
        3 => Just(Admin::Second { fullsync: false }),
    ];
    prop_oneof![
        6 => (node.clone(), admin).prop_map(|(i, a)| WStep::Admin(i, a)),
        1 => node.clone().prop_map(WStep::Kill),
        2 => node.clone().prop_map(WStep::PowerOn),
        3 => node.clone().prop_map(WStep::Isolate),
        3 => Just(WStep::Heal),
        4 => node.clone().prop_map(WStep::ResyncDone),
        8 => (1u64..2_500, any::<[bool; 2]>()).prop_map(|(ms, silent)| WStep::Advance { ms, silent }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, max_shrink_iters: 20_000, .. ProptestConfig::default() })]

    #[test]
    fn witness_split_never_two_serving(steps in prop::collection::vec(witness_step(), 1..80)) {
        let mut policy = MirrorPolicy::new("n1", "n2");
        policy.witness = true;
        let mut sim = MirrorSim::new(&policy);
        let mut isolated: Option<usize> = None;
        for (k, s) in steps.iter().enumerate() {
            sim.begin_step();
            match s.clone() {
                WStep::Admin(i, a) => { let _ = sim.event(i, MirrorEvent::Admin(a)); }
                WStep::Kill(i) => sim.kill(i),
                WStep::PowerOn(i) => sim.power_on(i),
                WStep::Isolate(i) => {
                    if isolated.is_none() {
                        isolated = Some(i);
                        sim.cut();
                    }
                }
                WStep::Heal => { isolated = None; sim.heal(); }
                WStep::ResyncDone(i) => sim.resync_done(i),
                WStep::Advance { ms, silent } => {
                    sim.now += ms;
                    for (i, quiet) in silent.iter().enumerate() {
                        if !quiet {
                            let _ = sim.event(i, MirrorEvent::Witness { reachable: isolated != Some(i) });
                        }
                    }
                    sim.advance(0);
                }
            }
            sim.check_invariants();
            sim.write();
            prop_assert!(sim.violations.is_empty(), "after step {} {:?}: {:?}", k + 1, s, sim.violations);
            prop_assert!(!(sim.serving(0) && sim.serving(1)), "after step {} {:?}: both nodes serve", k + 1, s);
        }
    }
}

#[derive(Debug, Clone)]
enum FarmStep {
    Admin(usize, Admin),
    Kill(usize),
    PowerOn(usize),
    Connected(usize, bool),
    Resource(usize, bool),
    Advance(u64),
}

fn farm_step() -> impl Strategy<Value = FarmStep> {
    let node = 0usize..3;
    prop_oneof![
        4 => (node.clone(), prop_oneof![Just(Admin::Start), Just(Admin::Stop), Just(Admin::Restart), Just(Admin::StopStart), Just(Admin::Prim)])
            .prop_map(|(i, a)| FarmStep::Admin(i, a)),
        1 => node.clone().prop_map(FarmStep::Kill),
        2 => node.clone().prop_map(FarmStep::PowerOn),
        2 => (node.clone(), any::<bool>()).prop_map(|(i, b)| FarmStep::Connected(i, b)),
        2 => (node.clone(), any::<bool>()).prop_map(|(i, b)| FarmStep::Resource(i, b)),
        1 => (1u64..10_000).prop_map(FarmStep::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, .. ProptestConfig::default() })]

    /// Farm: actions are well formed, and once everything settles every node that is UP gives the
    /// filter exactly the set of UP nodes it can reach (so all connected nodes agree).
    #[test]
    fn farm_membership(steps in prop::collection::vec(farm_step(), 1..60)) {
        let policy = FarmPolicy {
            local: String::new(),
            nodes: vec![("n1".into(), 1), ("n2".into(), 2), ("n3".into(), 1)],
            loop_limit: 3,
            loop_interval_ms: 86_400_000,
            resources: [("web".to_string(), FailAction::Wait)].into_iter().collect(),
        };
        let mut sim = FarmSim::new(&policy);
        let mut last_members: Vec<Option<Vec<(String, u32)>>> = vec![None; 3];
        for s in &steps {
            sim.begin_step();
            match s.clone() {
                FarmStep::Admin(i, a) => { let _ = sim.event(i, FarmEvent::Admin(a)); }
                FarmStep::Kill(i) => { sim.kill(i); last_members[i] = None; }
                FarmStep::PowerOn(i) => sim.power_on(i),
                FarmStep::Connected(i, b) => sim.set_connected(i, b),
                FarmStep::Resource(i, up) => { let _ = sim.event(i, FarmEvent::Resource { name: "web".into(), up }); }
                FarmStep::Advance(ms) => sim.advance(ms),
            }
            for (i, actions) in sim.actions.iter().enumerate() {
                for a in actions {
                    if let Action::SetMembers(m) = a { last_members[i] = Some(m.clone()); }
                }
            }
            prop_assert!(sim.violations.is_empty(), "{:?}", sim.violations);
            for (i, members) in last_members.iter().enumerate() {
                if sim.status(i).map(|s| s.state) != Some(State::Up) { continue; }
                let expected: Vec<(String, u32)> = policy.nodes.iter().enumerate()
                    .filter(|(j, _)| *j == i || (sim.status(*j).map(|s| s.state) == Some(State::Up)
                        && sim.nodes[i].connected && sim.nodes[*j].connected))
                    .map(|(_, n)| n.clone())
                    .collect();
                prop_assert_eq!(members.as_ref(), Some(&expected), "node {}", i);
            }
        }
    }
}
