//! Hosts as Linux network namespaces: one per host, each with one address on a
//! bridge (a switch, in its own namespace), for tests of a cluster spread over
//! hosts. Needs root (`ip netns`); everything is removed on drop, processes
//! first.

use std::path::Path;
use std::process::{Command, Stdio};

/// A switch and `n` hosts: host `i` is namespace `{tag}-h{i}` at 10.77.0.{i + 1}/24,
/// wired to port `p{i}` of the bridge in `{tag}-sw`.
pub struct Hosts {
    tag: String,
    n: usize,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Hosts {
    pub fn new(n: usize) -> Hosts {
        let tag = format!("wft{}", std::process::id() % 100_000);
        let hosts = Hosts { tag, n };
        let sw = hosts.switch();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for i in 0..n {
            let h = hosts.name(i);
            let port = format!("p{i}");
            ip(&["netns", "add", &h]);
            ip(&[
                "-n", &h, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &sw,
            ]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &sw, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                &h,
                "addr",
                "add",
                &format!("{}/24", hosts.addr(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &h, "link", "set", "eth0", "up"]);
            ip(&["-n", &h, "link", "set", "lo", "up"]);
        }
        hosts
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.tag)
    }

    /// The namespace of host `i`.
    pub fn name(&self, i: usize) -> String {
        format!("{}-h{i}", self.tag)
    }

    /// The address of host `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// A command run on host `i`.
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name(i)]).arg(program);
        c
    }

    /// The shell command that takes host `i`'s link down (its switch port:
    /// packets vanish silently, as with a pulled cable) or up.
    pub fn link_cmd(&self, i: usize, up: bool) -> String {
        format!(
            "ip -n {} link set p{i} {}",
            self.switch(),
            if up { "up" } else { "down" }
        )
    }

    pub fn set_link(&self, i: usize, up: bool) {
        ip(&[
            "-n",
            &self.switch(),
            "link",
            "set",
            &format!("p{i}"),
            if up { "up" } else { "down" },
        ]);
    }

    /// Process ids running on host `i` whose command name is `comm`.
    pub fn pids(&self, i: usize, comm: &str) -> Vec<u32> {
        self.all_pids(i)
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .collect()
    }

    fn all_pids(&self, i: usize) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name(i)])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Runs `f` on a thread inside host `i`'s network namespace (its sockets are
    /// that host's).
    pub fn run_in<T: Send + 'static>(&self, i: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name(i));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the namespace");
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on a namespace file we opened, for this thread only (a
            // network namespace can be entered by one thread of a process).
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in the namespace")
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..self.n {
            for p in self.all_pids(i) {
                super::signal(p, libc::SIGCONT);
                super::signal(p, libc::SIGKILL);
            }
        }
        for i in 0..self.n {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch()])
            .status();
    }
}
