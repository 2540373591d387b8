//! Replays every scenario file of tests/scenarios/ (at the top of the repository) against the
//! machines of a module's nodes. A scenario is a list of steps: an event on a node (or on the
//! network), then the expected state of every node and, optionally, the exact actions each node
//! emitted during the step (persist and log actions aside), log substrings, or a refusal.
//! See tests/scenarios/README.md for the format.

mod sim;

use serde::Deserialize;
use sim::{logs, short, FarmSim, MirrorSim};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tandem_machine::*;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Scenario {
    description: String,
    #[serde(default = "mirror")]
    kind: String,
    /// Farm only: the nodes and their power, e.g. { n1 = 1, n2 = 2, n3 = 1 }.
    #[serde(default)]
    power: BTreeMap<String, u32>,
    #[serde(default)]
    policy: PolicySpec,
    step: Vec<Step>,
}

fn mirror() -> String {
    "mirror".into()
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    preferred: Option<String>,
    failover: Option<bool>,
    witness: Option<bool>,
    loop_limit: Option<u32>,
    loop_interval_ms: Option<u64>,
    start_grace_ms: Option<u64>,
    #[serde(default)]
    resources: BTreeMap<String, String>,
}

/// serde cannot deny unknown fields next to a flatten: `check_keys` does it instead.
#[derive(Deserialize, Debug)]
struct Step {
    #[serde(rename = "do")]
    action: String,
    #[serde(default)]
    expect: BTreeMap<String, String>,
    /// Expected actions per node, e.g. n1 = ["vip take", "hook start_prim"].
    #[serde(flatten)]
    actions: BTreeMap<String, toml::Value>,
}

fn fail_action(s: &str) -> FailAction {
    match s {
        "restart" => FailAction::Restart,
        "stopstart" => FailAction::StopStart,
        "wait" => FailAction::Wait,
        "stop" => FailAction::Stop,
        other => panic!("unknown checker action {other}"),
    }
}

fn hook(s: &str) -> Hook {
    [
        Hook::Prestart,
        Hook::StartPrim,
        Hook::StopPrim,
        Hook::StartSecond,
        Hook::StopSecond,
        Hook::StartBoth,
        Hook::StopBoth,
        Hook::Poststop,
    ]
    .into_iter()
    .find(|h| h.as_str() == s)
    .unwrap_or_else(|| panic!("unknown hook {s}"))
}

fn admin(cmd: &str) -> Option<Admin> {
    Some(match cmd {
        "start" => Admin::Start,
        "stop" => Admin::Stop,
        "restart" => Admin::Restart,
        "stopstart" => Admin::StopStart,
        "swap" => Admin::Swap,
        "prim" => Admin::Prim,
        "second" => Admin::Second { fullsync: false },
        "second-full" => Admin::Second { fullsync: true },
        "primforce" => Admin::PrimForce,
        "failover-on" => Admin::Failover(true),
        "failover-off" => Admin::Failover(false),
        _ => return None,
    })
}

struct Expectations<'a> {
    step_no: usize,
    step: &'a Step,
    errors: Vec<String>,
}

impl Expectations<'_> {
    fn check(&mut self, node: &str, status: Option<Status>, actions: &[Action]) {
        let ctx = format!("step {} (`{}`), {node}", self.step_no, self.step.action);
        if let Some(want) = self.step.expect.get(node) {
            let got = match status {
                None => "OFF".to_string(),
                Some(s) if want.contains('/') => format!("{}/{}", s.state, s.readiness),
                Some(s) => s.state.to_string(),
            };
            if &got != want {
                self.errors.push(format!("{ctx}: state {got}, expected {want}"));
            }
        }
        if let Some(v) = self.step.actions.get(node) {
            let want: Vec<String> = v
                .as_array()
                .unwrap_or_else(|| panic!("{ctx}: actions must be a list of strings"))
                .iter()
                .map(|x| x.as_str().expect("action strings").to_string())
                .collect();
            let got = short(actions);
            if got != want {
                self.errors.push(format!("{ctx}: actions\n      got      {got:?}\n      expected {want:?}"));
            }
        }
        if let Some(v) = self.step.actions.get("log") {
            for entry in v.as_array().expect("log = [\"node: substring\"]") {
                let entry = entry.as_str().unwrap();
                let (n, sub) = entry.split_once(": ").expect("log entries are `node: substring`");
                if n == node && !logs(actions).iter().any(|l| l.contains(sub)) {
                    self.errors.push(format!("{ctx}: no log containing {sub:?} in {:?}", logs(actions)));
                }
            }
        }
    }
}

fn refused_expectation(step: &Step) -> Option<String> {
    step.actions.get("refused").map(|v| v.as_str().expect("refused = \"substring\"").to_string())
}

fn check_refusal(step_no: usize, step: &Step, result: Result<(), Refused>, errors: &mut Vec<String>) {
    let ctx = format!("step {step_no} (`{}`)", step.action);
    match (refused_expectation(step), result) {
        (None, Ok(())) => {}
        (None, Err(e)) => errors.push(format!("{ctx}: unexpectedly refused: {e}")),
        (Some(sub), Ok(())) => errors.push(format!("{ctx}: expected a refusal containing {sub:?}")),
        (Some(sub), Err(e)) => {
            if !e.to_string().contains(&sub) {
                errors.push(format!("{ctx}: refusal `{e}` does not contain {sub:?}"));
            }
        }
    }
}

fn run_mirror(sc: &Scenario) -> Vec<String> {
    let mut policy = MirrorPolicy::new("n1", "n2");
    let p = &sc.policy;
    policy.preferred = match p.preferred.as_deref() {
        None | Some("alone") => Preferred::Alone,
        Some("last") => Preferred::Last,
        Some(n) => Preferred::Node(n.into()),
    };
    policy.failover_default = p.failover.unwrap_or(true);
    policy.witness = p.witness.unwrap_or(false);
    policy.loop_limit = p.loop_limit.unwrap_or(3);
    policy.loop_interval_ms = p.loop_interval_ms.unwrap_or(86_400_000);
    policy.start_grace_ms = p.start_grace_ms.unwrap_or(1000);
    policy.resources = p.resources.iter().map(|(k, v)| (k.clone(), fail_action(v))).collect();
    let mut sim = MirrorSim::new(&policy);
    sim.writes = true;
    let mut errors = Vec::new();
    for (k, step) in sc.step.iter().enumerate() {
        let step_no = k + 1;
        sim.begin_step();
        let words: Vec<&str> = step.action.split_whitespace().collect();
        let mut result = Ok(());
        match words.as_slice() {
            ["cut"] => sim.cut(),
            ["kill-all"] => sim.kill_all(),
            ["heal"] => sim.heal(),
            ["replication-broken"] => sim.replication_broken(),
            ["advance", ms] => sim.advance(ms.parse().expect("advance MS")),
            [node, rest @ ..] => {
                let i = sim.index(node);
                match rest {
                    ["kill"] => sim.kill(i),
                    ["power-on"] => sim.power_on(i),
                    ["resync-done"] => sim.resync_done(i),
                    ["shutdown"] => result = sim.event(i, MirrorEvent::Shutdown),
                    ["resync-failed"] => {
                        result = sim.event(i, MirrorEvent::ResyncFailed { reason: "connection reset".into() })
                    }
                    ["down", r] => result = sim.event(i, MirrorEvent::Resource { name: r.to_string(), up: false }),
                    ["up", r] => result = sim.event(i, MirrorEvent::Resource { name: r.to_string(), up: true }),
                    ["witness-on"] => result = sim.event(i, MirrorEvent::Witness { reachable: true }),
                    ["witness-off"] => result = sim.event(i, MirrorEvent::Witness { reachable: false }),
                    ["hook-failed", h] => {
                        result = sim.event(i, MirrorEvent::HookFailed { hook: hook(h), reason: "exit status 1".into() })
                    }
                    [cmd] => match admin(cmd) {
                        Some(a) => result = sim.event(i, MirrorEvent::Admin(a)),
                        None => panic!("step {step_no}: unknown command `{}`", step.action),
                    },
                    _ => panic!("step {step_no}: unknown command `{}`", step.action),
                }
            }
            [] => panic!("step {step_no}: empty `do`"),
        }
        check_refusal(step_no, step, result, &mut errors);
        sim.check_invariants();
        let mut ex = Expectations { step_no, step, errors: Vec::new() };
        for i in 0..2 {
            let name = sim.nodes[i].name.clone();
            ex.check(&name, sim.status(i), &sim.actions[i]);
        }
        errors.extend(ex.errors);
        sim.write();
    }
    errors.extend(sim.violations.iter().map(|v| format!("invariant: {v}")));
    errors
}

fn run_farm(sc: &Scenario) -> Vec<String> {
    assert!(sc.power.len() >= 2, "a farm scenario names its nodes in `power`");
    let p = &sc.policy;
    let policy = FarmPolicy {
        local: String::new(),
        nodes: sc.power.iter().map(|(n, w)| (n.clone(), *w)).collect(),
        loop_limit: p.loop_limit.unwrap_or(3),
        loop_interval_ms: p.loop_interval_ms.unwrap_or(86_400_000),
        resources: p.resources.iter().map(|(k, v)| (k.clone(), fail_action(v))).collect(),
    };
    let mut sim = FarmSim::new(&policy);
    let mut errors = Vec::new();
    for (k, step) in sc.step.iter().enumerate() {
        let step_no = k + 1;
        sim.begin_step();
        let words: Vec<&str> = step.action.split_whitespace().collect();
        let mut result = Ok(());
        match words.as_slice() {
            ["advance", ms] => sim.advance(ms.parse().expect("advance MS")),
            [node, rest @ ..] => {
                let i = sim.index(node);
                match rest {
                    ["kill"] => sim.kill(i),
                    ["power-on"] => sim.power_on(i),
                    ["cut"] => sim.set_connected(i, false),
                    ["heal"] => sim.set_connected(i, true),
                    ["down", r] => result = sim.event(i, FarmEvent::Resource { name: r.to_string(), up: false }),
                    ["up", r] => result = sim.event(i, FarmEvent::Resource { name: r.to_string(), up: true }),
                    ["hook-failed", h] => {
                        result = sim.event(i, FarmEvent::HookFailed { hook: hook(h), reason: "exit status 1".into() })
                    }
                    [cmd] => match admin(cmd) {
                        Some(a) => result = sim.event(i, FarmEvent::Admin(a)),
                        None => panic!("step {step_no}: unknown command `{}`", step.action),
                    },
                    _ => panic!("step {step_no}: unknown command `{}`", step.action),
                }
            }
            [] => panic!("step {step_no}: empty `do`"),
        }
        check_refusal(step_no, step, result, &mut errors);
        let mut ex = Expectations { step_no, step, errors: Vec::new() };
        for i in 0..sim.nodes.len() {
            let name = sim.nodes[i].name.clone();
            ex.check(&name, sim.status(i), &sim.actions[i]);
        }
        errors.extend(ex.errors);
    }
    errors.extend(sim.violations.iter().map(|v| format!("invariant: {v}")));
    errors
}

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios")
}

#[test]
fn scenarios() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenario_dir())
        .expect("tests/scenarios exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "at least 30 scenario files, found {}", files.len());
    let mut failed = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let sc: Scenario = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!sc.description.is_empty());
        let nodes: Vec<String> =
            if sc.kind == "farm" { sc.power.keys().cloned().collect() } else { vec!["n1".into(), "n2".into()] };
        for (k, step) in sc.step.iter().enumerate() {
            for key in step.actions.keys().chain(step.expect.keys()) {
                assert!(
                    nodes.contains(key) || key == "log" || key == "refused",
                    "{}: step {}: unknown key `{key}`",
                    f.display(),
                    k + 1
                );
            }
        }
        let errors = match sc.kind.as_str() {
            "mirror" => run_mirror(&sc),
            "farm" => run_farm(&sc),
            k => panic!("{}: unknown kind {k}", f.display()),
        };
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if errors.is_empty() {
            println!("ok   {name}");
        } else {
            println!("FAIL {name}");
            for e in &errors {
                println!("     {e}");
            }
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "{} scenario(s) failed: {failed:?}", failed.len());
}
