//! The Python tools the tests run (moto's server; the official Standard
//! Webhooks and Svix libraries), pinned in `tests/python-requirements.txt`
//! and installed on first use into a virtual environment under the target
//! directory (`target/pyenv`), so `cargo test` needs only Rust and Python 3.
//!
//! Parallel tests share one [`python_env`] per process; parallel test
//! binaries take a lock file, so one of them installs and the others wait on
//! the lock and find the environment made. The environment keeps the hash of
//! the requirements it was made from: a changed pin makes it afresh.
//! `rm -rf target/pyenv` does too.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// A virtual environment with the pinned tools installed.
pub struct PythonEnv {
    root: PathBuf,
}

impl PythonEnv {
    /// The environment's interpreter, which imports the pinned libraries.
    pub fn python(&self) -> PathBuf {
        self.bin("python3")
    }

    /// A console script the pinned packages install (`moto_server`).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.root.join("bin").join(name)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The environment, made (once, under a lock) if it is missing or was made
/// from other pins. Panics with one line saying what to install when
/// Python 3, its venv module or pip's download is not there.
pub fn python_env() -> &'static PythonEnv {
    static ENV: OnceLock<Result<PythonEnv, String>> = OnceLock::new();
    match ENV.get_or_init(prepare) {
        Ok(env) => env,
        Err(line) => panic!("{line}"),
    }
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits in the workspace")
}

/// `CARGO_TARGET_DIR` when set (relative to the workspace when relative),
/// else the workspace's `target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace().join(dir),
        _ => workspace().join("target"),
    }
}

fn prepare() -> Result<PythonEnv, String> {
    let requirements = workspace().join("tests/python-requirements.txt");
    let pins = fs::read(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    let want: String = Sha256::digest(&pins)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let target = target_dir();
    let env = PythonEnv {
        root: target.join("pyenv"),
    };
    let marker = env.root.join("requirements.sha256");
    let io_error = |what: &str, e: io::Error| format!("{what} under {}: {e}", target.display());

    fs::create_dir_all(&target).map_err(|e| io_error("cannot create the target directory", e))?;
    // Held until this function returns (closing the file releases it).
    let lock = File::create(target.join("pyenv.lock"))
        .map_err(|e| io_error("cannot create pyenv.lock", e))?;
    lock.lock()
        .map_err(|e| io_error("cannot lock pyenv.lock", e))?;

    let made = fs::read_to_string(&marker).is_ok_and(|had| had == want);
    if made && env.python().exists() {
        return Ok(env);
    }
    // One attempt per `cargo test`: its other test binaries repeat the first
    // one's failure instead of waiting on pip's retries again (offline, that
    // is 20 s each).
    let failed = target.join("pyenv.failed");
    let attempt = cargo_run().map(|cargo| format!("{cargo} {want}\n"));
    if let (Some(attempt), Ok(record)) = (&attempt, fs::read_to_string(&failed))
        && let Some(line) = record.strip_prefix(attempt.as_str())
    {
        return Err(line.to_string());
    }
    let _ = fs::remove_file(&failed);
    install(&env, &requirements, &want).inspect_err(|line| {
        if let Some(attempt) = &attempt {
            let _ = fs::write(&failed, format!("{attempt}{line}"));
        }
    })?;
    Ok(env)
}

/// The `cargo` process this test binary runs under (its pid and start
/// time, so a later cargo given the same pid is another run), when the
/// parent is cargo and /proc says so.
fn cargo_run() -> Option<String> {
    let parent = std::os::unix::process::parent_id();
    let comm = fs::read_to_string(format!("/proc/{parent}/comm")).ok()?;
    if comm.trim() != "cargo" {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{parent}/stat")).ok()?;
    // Field 22, after the parenthesised command name.
    let started = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{parent}:{started}"))
}

fn install(env: &PythonEnv, requirements: &Path, want: &str) -> Result<(), String> {
    let marker = env.root.join("requirements.sha256");
    let started = std::time::Instant::now();
    // Made from other pins, or half made by a run that was stopped.
    if env.root.exists() {
        fs::remove_dir_all(&env.root)
            .map_err(|e| format!("cannot remove {}: {e}", env.root.display()))?;
    }
    run(Command::new("python3").arg("-m").arg("venv").arg(&env.root)).map_err(|said| {
        let _ = fs::remove_dir_all(&env.root);
        format!(
            "tests need Python 3 with its venv module on PATH as python3 \
             (Debian/Ubuntu: apt install python3 python3-venv) to make {}: {said}",
            env.root.display()
        )
    })?;
    run(Command::new(env.python())
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("-r")
        .arg(requirements))
    .map_err(|said| {
        format!(
            "tests need the Python packages pinned in tests/python-requirements.txt and pip \
             could not install them into {} (offline? a proxy?); pip said: {said}",
            env.root.display()
        )
    })?;
    fs::write(&marker, want).map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    eprintln!(
        "made {} from tests/python-requirements.txt in {:.1} s",
        env.root.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `cmd`; on failure, what it said, on one line.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cmd.get_program().display()))?;
    if out.status.success() {
        return Ok(());
    }
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // pip's ERROR lines say why; its retry warnings before them do not.
    let errors: Vec<&str> = said.lines().filter(|l| l.starts_with("ERROR:")).collect();
    let said = if errors.is_empty() {
        said.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        errors.join(" ")
    };
    // The end says why; keep the line readable.
    let cut = said.len().saturating_sub(600);
    let cut = (cut..=said.len())
        .find(|&i| said.is_char_boundary(i))
        .unwrap_or(0);
    let tail = &said[cut..];
    Err(if tail.is_empty() {
        format!("{} and nothing on stderr", out.status)
    } else if cut > 0 {
        format!("… {tail}")
    } else {
        tail.to_string()
    })
}
