//! Containers for the tests that run HarmonyLite under Docker: whether an engine answers, an image built for one
//! test (its tag removed on drop) and a compose project (taken down with its volumes on drop, also on panic).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use super::process::{last_lines, output_text};

/// How many log lines of each service failure messages about a compose project show.
const LOG_LINES: usize = 40;

/// The repository's root (the build context and the scripts' home).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`; its stdout, trimmed, when it exits 0, else the command and all it printed.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(o) => Err(format!(
            "{cmd:?} failed ({}):\n{}",
            o.status,
            output_text(&o)
        )),
        Err(e) => Err(format!("cannot run {cmd:?}: {e}")),
    }
}

/// [`run`] on `docker ARGS`.
pub fn docker(args: &[&str]) -> Result<String, String> {
    run(Command::new("docker").args(args))
}

/// `None` when a Docker engine answers `docker info`, else why not, on one line (for the test's SKIPPED line).
pub fn engine_unavailable() -> Option<String> {
    docker(&["info", "--format", "{{.ServerVersion}}"])
        .err()
        .map(|e| {
            last_lines(&e, 3)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
}

/// A name no other run uses at the same time: `prefix`, this process's id and the clock (lowercase letters and
/// digits only, as compose project names must be).
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

/// An image this test built. On drop its tag is removed, and with it every image the build made anew (the
/// legacy builder's untagged images of earlier stages and steps); images the build took from its cache stay.
pub struct Image {
    pub tag: String,
    /// The images this build made (not taken from the cache), in the order made.
    created: Vec<String>,
}

impl Image {
    /// `docker build -t TAG --build-arg K=V... CONTEXT`; panics with the build's output when it fails.
    pub fn build(tag: &str, context: &Path, build_args: &[(&str, &str)]) -> Image {
        let mut cmd = Command::new("docker");
        cmd.args(["build", "-t", tag]);
        for (k, v) in build_args {
            cmd.arg("--build-arg").arg(format!("{k}={v}"));
        }
        cmd.arg(context);
        match run(&mut cmd) {
            Ok(out) => Image {
                tag: tag.to_string(),
                created: images_made(&out),
            },
            Err(e) => panic!("{}", last_lines(&e, 60)),
        }
    }

    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        docker(&["image", "inspect", "-f", "{{.Size}}", &self.tag])
            .expect("docker image inspect")
            .parse()
            .expect("image size")
    }
}

/// The images a legacy-builder build made, from its output: each step's ` ---> ID` line, except a stage's base
/// (`FROM`) and a step `Using cache`. BuildKit's output has no such lines (and it leaves no untagged images).
fn images_made(build_output: &str) -> Vec<String> {
    let mut made = Vec::new();
    let mut reused = false;
    for line in build_output.lines() {
        if line.starts_with("Step ") {
            reused = line.contains(" : FROM ");
        } else if line.trim() == "---> Using cache" {
            reused = true;
        } else if let Some(id) = line.trim().strip_prefix("---> ")
            && !reused
            && id.len() >= 12
            && id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            made.push(id.to_string());
        }
    }
    made
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = docker(&["rmi", &self.tag]);
        // Most went with the tag; the rest (earlier stages) one by one, children first, none of their parents.
        for id in self.created.iter().rev() {
            if docker(&["image", "inspect", id]).is_ok() {
                let _ = docker(&["rmi", "--no-prune", id]);
            }
        }
    }
}

/// One compose project of a compose file: `docker-compose` (v1) when installed, else `docker compose` (v2).
/// Taken down on drop with its volumes and orphans.
pub struct Compose {
    pub project: String,
    file: PathBuf,
    env: Vec<(String, String)>,
}

impl Compose {
    /// A project named `project` of `file`, whose commands see `env` (the file's `${VARIABLES}`). Starts nothing.
    pub fn new(file: &Path, project: &str, env: Vec<(String, String)>) -> Compose {
        Compose {
            project: project.to_string(),
            file: file.to_path_buf(),
            env,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let v1 = Command::new("docker-compose")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        let mut cmd = if v1 {
            Command::new("docker-compose")
        } else {
            let mut c = Command::new("docker");
            c.arg("compose");
            c
        };
        cmd.arg("-p").arg(&self.project).arg("-f").arg(&self.file);
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `<compose> -p PROJECT -f FILE ARGS`.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        run(&mut self.command(args))
    }

    /// The id of `service`'s container.
    pub fn container(&self, service: &str) -> String {
        let id = self
            .run(&["ps", "-a", "-q", service])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!id.is_empty(), "no container for service {service}");
        id
    }

    /// A container's health as Docker sees it (`starting`, `healthy`, `unhealthy`), or its error.
    pub fn health(&self, container: &str) -> String {
        docker(&["inspect", "-f", "{{.State.Health.Status}}", container]).unwrap_or_else(|e| e)
    }

    /// The networks a container is attached to, by name.
    pub fn networks(&self, container: &str) -> Vec<String> {
        docker(&[
            "inspect",
            "-f",
            "{{range $name, $net := .NetworkSettings.Networks}}{{$name}} {{end}}",
            container,
        ])
        .unwrap_or_else(|e| panic!("{e}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
    }

    /// `docker exec CONTAINER ARGS`.
    pub fn exec(&self, container: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["exec", container];
        all.extend_from_slice(args);
        docker(&all)
    }

    /// Every service's last log lines, for failure messages.
    pub fn logs(&self) -> String {
        let tail = LOG_LINES.to_string();
        self.run(&["logs", "--no-color", "--tail", &tail])
            .unwrap_or_else(|e| e)
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "compose project {} at the failure:\n{}",
                self.project,
                self.logs()
            );
        }
        if let Err(e) = self.run(&["down", "-v", "--remove-orphans", "-t", "5"]) {
            eprintln!("taking compose project {} down: {e}", self.project);
        }
    }
}
