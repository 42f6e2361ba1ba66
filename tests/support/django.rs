//! Django projects kept under `tests/tools/` (e.g. `tests/tools/django`), run against a node's database as the
//! application on that node would run them: `python3 manage.py ...` with the node's database in `HL_DJANGO_DB`
//! and the release of the application code in `HL_DJANGO_RELEASE` (what the project's settings read), and no
//! bytecode written into the source tree. A command runs to completion within a deadline ([`Django::run`]: its
//! exit code and its stdout and stderr, in order) or in the background as an application ([`Django::spawn`]: a
//! [`ChildGuard`], killed when dropped).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::node::Node;
use super::process::{ChildGuard, read_lossy};
use super::wait;

/// One Django project of `tests/tools/`.
pub struct Django {
    /// The project's directory (holds `manage.py`).
    pub project: PathBuf,
    /// Where [`Django::run`] keeps each command's output (e.g. the cluster's directory).
    pub work: PathBuf,
}

/// What a command of [`Django::run`] did.
#[derive(Debug)]
pub struct Ran {
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its stdout and stderr, interleaved as written.
    pub output: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl Django {
    /// The project `tests/tools/<name>`, with command output kept in `work`. Panics when `python3` cannot import
    /// Django (`scripts/test.sh` installs it with pip).
    pub fn new(name: &str, work: &Path) -> Django {
        let out = Command::new("python3")
            .args(["-c", "import django; print(django.get_version())"])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            other => panic!(
                "python3 cannot import Django ({other:?}); install it with `pip install django` \
                 (scripts/test.sh does)"
            ),
        }
        let project = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/tools")
            .join(name);
        assert!(
            project.join("manage.py").is_file(),
            "no manage.py in {project:?}"
        );
        Django {
            project,
            work: work.to_path_buf(),
        }
    }

    /// `python3 manage.py ARGS` on `node`'s database with the code of `release`, in the project's directory.
    pub fn command(&self, node: &Node, release: u32, args: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg("manage.py")
            .args(args)
            .current_dir(&self.project)
            .env("HL_DJANGO_DB", &node.db)
            .env("HL_DJANGO_RELEASE", release.to_string())
            .env("DJANGO_SETTINGS_MODULE", "hlsite.settings")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1");
        cmd
    }

    /// Runs `manage.py ARGS` to completion (killed after `timeout`, which fails the test).
    pub fn run(&self, node: &Node, release: u32, args: &[&str], timeout: Duration) -> Ran {
        static N: AtomicU64 = AtomicU64::new(0);
        let log = self.work.join(format!(
            "django-{}-node{}-{}.log",
            N.fetch_add(1, Ordering::Relaxed),
            node.id,
            args.first().copied().unwrap_or("help")
        ));
        let mut child = self.spawn(node, release, args, &log);
        let status = wait::poll(timeout, || child.exited()).unwrap_or_else(|| {
            panic!(
                "manage.py {args:?} on node {} still running after {timeout:?}; its output:\n{}",
                node.id,
                read_lossy(&log)
            )
        });
        Ran {
            code: status.code(),
            output: read_lossy(&log),
        }
    }

    /// Starts `manage.py ARGS` in the background, stdout and stderr appended to `log`.
    pub fn spawn(&self, node: &Node, release: u32, args: &[&str], log: &Path) -> ChildGuard {
        ChildGuard::spawn_logged(self.command(node, release, args), log)
    }
}
