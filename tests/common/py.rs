//! The Python clients tests check the appliance with (the OASIS STIX
//! validator, python-stix2, taxii2-client), in one virtualenv under
//! /var/tmp that the first test needing it creates. Tests running at once
//! take a lock, so pip runs once.

use std::path::PathBuf;
use std::process::Command;

pub const VENV: &str = "/var/tmp/sandgnat-py";

/// The venv's python, with every `(module, pip package)` importable.
pub fn python_with(needs: &[(&str, &str)]) -> PathBuf {
    let python = PathBuf::from(VENV).join("bin/python");
    let imports = needs
        .iter()
        .map(|(m, _)| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let ready = || {
        Command::new(&python)
            .args(["-c", &imports])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready() {
        return python;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{VENV}.lock"))
        .expect("open the venv lock");
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor we own; released when `lock` drops.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if !ready() {
        if !python.exists() {
            let st = Command::new("python3")
                .args(["-m", "venv", VENV])
                .status()
                .expect("run python3 -m venv");
            assert!(st.success(), "python3 -m venv {VENV} failed");
        }
        let st = Command::new(&python)
            .args(["-m", "pip", "install", "-q"])
            .args(needs.iter().map(|(_, p)| *p))
            .status()
            .expect("run pip");
        assert!(st.success(), "pip install into {VENV} failed");
        assert!(ready(), "{imports} fails after pip install");
    }
    python
}
