//! Harness for the lab end-to-end tests (tier 2): a lab per test with its own name, removed
//! on every path (Drop), and the CLI run as a user would run it.
#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn flatnet_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flatnet")
}

/// Whether this machine can run lab tests; when it cannot, [`testkit::skip_or_fail`] prints
/// SKIPPED, or panics under REQUIRE_NETNS=1.
pub fn can_run(test: &str) -> bool {
    let root = testkit::is_root();
    let tools = ["ip", "etcd"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let cni = std::path::Path::new(flatnet_bin())
        .with_file_name("flatnet-cni")
        .exists();
    if root && tools && cni {
        return true;
    }
    testkit::skip_or_fail(
        test,
        &format!("cannot run lab tests here: root={root} ip+etcd={tools} flatnet-cni built={cni}"),
    );
    false
}

pub struct Lab {
    pub name: String,
}

impl Lab {
    /// `flatnet lab up` with a name unique to the test; panics (after cleanup) on failure.
    pub fn up(name: &str, extra: &[&str]) -> Lab {
        let lab = Lab {
            name: name.to_string(),
        };
        let _ = lab.run(&["lab", "down"]);
        let mut args = vec!["lab", "up"];
        args.extend_from_slice(extra);
        let out = lab.run(&args);
        assert!(
            out.status.success(),
            "lab up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(flatnet_bin());
        c.arg(format!("--lab={}", self.name)).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run flatnet")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "flatnet {args:?} failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `flatnet apply -f -` with `yaml` on stdin, whatever the outcome.
    pub fn try_apply(&self, yaml: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd(&["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write manifest");
        child.wait_with_output().expect("apply")
    }

    pub fn apply(&self, yaml: &str) -> String {
        let out = self.try_apply(yaml);
        assert!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn get_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("get -o json prints JSON")
    }

    /// Waits until the pod is Ready; returns its IP.
    pub fn wait_ready(&self, ns: &str, pod: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.run(&["get", "pod", pod, "-n", ns, "-o", "json"]);
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
                let ready = v["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                if ready {
                    return v["status"]["podIP"].as_str().expect("podIP").to_string();
                }
                assert!(
                    Instant::now() < deadline,
                    "pod {ns}/{pod} not Ready within {timeout:?}: {v}"
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "pod {ns}/{pod} not found within {timeout:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `flatnet exec` output.
    pub fn exec(&self, ns: &str, pod: &str, cmd: &[&str]) -> Output {
        let mut a = vec!["exec", "-n", ns, pod, "--"];
        a.extend_from_slice(cmd);
        self.run(&a)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.run(&["lab", "down"]);
        if !out.status.success() {
            eprintln!(
                "lab down {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Names of namespaces of a lab still present.
pub fn lab_namespaces(lab: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(&format!("flatnet-{lab}-")))
                .collect()
        })
        .unwrap_or_default()
}
