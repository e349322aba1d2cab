//! Across hosts: the hostfile, and `dfp cluster launch`, which starts every process of a
//! cluster run.
//!
//! A hostfile lists one process per line as `HOST:PORT` (the address timely's processes
//! connect to each other on), in process order; blank lines and `#` comments are skipped.
//! `launch` starts the processes whose host is this machine (a loopback address, `localhost`
//! or this machine's host name) as children, prefixing each line they print with `[i]`; for
//! other hosts it runs the same command over `ssh` with `--ssh`, or prints it to be run there.
//! When one process fails the others are stopped and `launch` exits non-zero.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The `host:port` of every process in a hostfile.
pub fn read_hostfile(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading hostfile {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let port = line.rsplit_once(':').map(|(_, p)| p);
        if port.is_none_or(|p| p.parse::<u16>().is_err()) {
            bail!("{}:{}: {line:?} is not HOST:PORT", path.display(), n + 1);
        }
        out.push(line.to_string());
    }
    if out.is_empty() {
        bail!("hostfile {} lists no process", path.display());
    }
    Ok(out)
}

/// Whether `host` is this machine.
fn is_local(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let me = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    matches!(host, "localhost" | "::1") || host.starts_with("127.") || host == me.trim()
}

/// Quotes `arg` for a POSIX shell.
fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// Prints a child's lines with its process index.
fn forward(index: usize, stream: impl std::io::Read + Send + 'static, to_stderr: bool) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if to_stderr {
                eprintln!("[{index}] {line}");
            } else {
                println!("[{index}] {line}");
            }
        }
    });
}

/// Starts every process of the cluster in `hostfile` with `run_args` (the arguments of
/// `dfp run`), `workers` threads each; waits for them all.
pub fn launch(hostfile: &Path, workers: usize, ssh: bool, run_args: &[String]) -> Result<ExitCode> {
    let hosts = read_hostfile(hostfile)?;
    let hostfile: PathBuf = std::fs::canonicalize(hostfile)
        .with_context(|| format!("resolving {}", hostfile.display()))?;
    let exe = std::env::current_exe().context("finding the dfp binary")?;
    let cwd = std::env::current_dir().context("the working directory")?;
    let run_args = match run_args.first().map(String::as_str) {
        Some("run") => &run_args[1..],
        _ => run_args,
    };
    let mut children: Vec<(usize, Child)> = Vec::new();
    for (i, addr) in hosts.iter().enumerate() {
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(run_args.iter().cloned());
        args.extend([
            "--workers".into(),
            workers.to_string(),
            "--processes".into(),
            hosts.len().to_string(),
            "--process-index".into(),
            i.to_string(),
            "--hostfile".into(),
            hostfile.display().to_string(),
        ]);
        let remote = format!(
            "cd {} && {} {}",
            shell_quote(&cwd.display().to_string()),
            shell_quote(&exe.display().to_string()),
            args.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let command = if is_local(host) {
            let mut c = Command::new(&exe);
            c.args(&args);
            c
        } else if ssh {
            let mut c = Command::new("ssh");
            c.arg(host).arg(&remote);
            c
        } else {
            eprintln!("[{i}] run on {host}: {remote}");
            continue;
        };
        let mut child = spawn(command).with_context(|| format!("starting process {i} ({addr})"))?;
        if let Some(out) = child.stdout.take() {
            forward(i, out, false);
        }
        if let Some(err) = child.stderr.take() {
            forward(i, err, true);
        }
        children.push((i, child));
    }
    wait_all(children)
}

fn spawn(mut command: Command) -> std::io::Result<Child> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// Waits for every child; when one fails, stops the others and says which failed.
fn wait_all(mut children: Vec<(usize, Child)>) -> Result<ExitCode> {
    let mut failed = None;
    while !children.is_empty() {
        let mut still = Vec::new();
        for (i, mut child) in children {
            match child.try_wait()? {
                Some(status) if !status.success() => {
                    eprintln!("[{i}] exited with {status}");
                    failed.get_or_insert((i, status));
                }
                Some(_) => {}
                None => still.push((i, child)),
            }
        }
        children = still;
        if let Some((i, _)) = failed {
            for (j, child) in &mut children {
                eprintln!("[{j}] stopped: process {i} failed");
                let _ = child.kill();
                let _ = child.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match failed {
        Some((i, status)) => bail!("process {i} of the cluster failed ({status})"),
        None => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfiles_list_host_port_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.txt");
        std::fs::write(
            &path,
            "# the cluster\n127.0.0.1:2101\n\nnode-b:2101  # second\n",
        )
        .unwrap();
        assert_eq!(
            read_hostfile(&path).unwrap(),
            ["127.0.0.1:2101", "node-b:2101"]
        );
        std::fs::write(&path, "127.0.0.1\n").unwrap();
        let e = read_hostfile(&path).unwrap_err().to_string();
        assert!(e.contains("hosts.txt:1") && e.contains("HOST:PORT"), "{e}");
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(
            read_hostfile(&path)
                .unwrap_err()
                .to_string()
                .contains("no process")
        );
    }

    #[test]
    fn only_this_machine_is_local_and_arguments_are_quoted() {
        assert!(is_local("127.0.0.1") && is_local("localhost") && is_local("[::1]"));
        assert!(!is_local("10.1.2.3"));
        assert_eq!(shell_quote("--workers"), "--workers");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
