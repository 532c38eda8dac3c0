//! `neuromfa slurm submit`: a sweep's workers as one Slurm job array. Each array task
//! runs `neuromfa worker`; the coordinator's address, the sweep token and the TLS CA
//! reach it through the environment sbatch is run in (`--export=ALL`), never through a
//! command line, where `ps` on a shared node would show them.
//!
//! Losing an array task loses no work: a cancelled, timed-out or preempted task gets
//! SIGTERM and gives its leases back; one killed outright loses them when they lapse.
//! Either way the tasks are leased again, and a requeued array task starts a fresh
//! worker that registers and joins in.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use neuromfa_coordinator::SweepSpec;

use crate::auth::is_loopback;
use crate::sweep::{dial_address, load_spec, recorded_token, sweep_token, WorkerArgs};

/// How long a coordinator started here may take to listen: it resolves every
/// checkpoint of the grid on the Hub first, a few minutes for a large suite.
const COORDINATOR_START_TIMEOUT: Duration = Duration::from_secs(900);

/// Seconds before the time limit at which an array task is asked to stop, enough to
/// give its leases back rather than leave them to lapse.
const STOP_BEFORE_TIME_LIMIT_S: u32 = 60;

#[derive(Debug, Subcommand)]
pub enum SlurmCommand {
    /// Submit a job array whose tasks each run `neuromfa worker`, starting the
    /// coordinator in the background first unless --coordinator points at a running one.
    Submit(SubmitArgs),
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The sweep spec (TOML): its state directory, token and coordinator address.
    pub spec: PathBuf,
    /// Array tasks to submit, one worker each.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: u32,
    /// Point the workers at this running coordinator (e.g. https://login1:50051) instead
    /// of starting one.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Slurm partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// Time limit of each array task, in Slurm's format (e.g. 4:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// CPUs per array task (each worker computes with as many threads).
    #[arg(long)]
    pub cpus_per_task: Option<u32>,
    /// Any other sbatch option, written as an `#SBATCH` line (repeatable), e.g.
    /// --sbatch=--account=proj42 --sbatch=--mem=8G.
    #[arg(long = "sbatch", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch_options: Vec<String>,
    /// CA certificate (PEM) the workers trust for an https:// coordinator; must be
    /// readable at this path on the compute nodes.
    #[arg(long, env = "NEUROMFA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Directory for the array tasks' logs (default STATE_DIR/slurm); must be
    /// writable from the compute nodes.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// The neuromfa binary the compute nodes run (default: this one, which must then be
    /// on a filesystem they share).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Print the batch script and do nothing else (needs no Slurm).
    #[arg(long)]
    pub dry_run: bool,
    /// Options for every `neuromfa worker`, after `--` (e.g. -- --cache-max-gb 100).
    #[arg(last = true, value_name = "WORKER_OPTIONS")]
    pub worker_options: Vec<String>,
}

pub fn run(command: SlurmCommand) -> Result<()> {
    match command {
        SlurmCommand::Submit(args) => submit(args),
    }
}

/// What the batch script is made of.
#[derive(Debug, Clone)]
pub struct BatchScript {
    pub job_name: String,
    pub workers: u32,
    pub partition: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: Option<u32>,
    pub sbatch_options: Vec<String>,
    pub log_dir: PathBuf,
    pub binary: PathBuf,
    pub worker_options: Vec<String>,
    /// Names of the variables the workers read from the environment.
    pub environment: Vec<&'static str>,
}

impl BatchScript {
    pub fn render(&self) -> String {
        let mut lines = vec![
            "#!/bin/bash".to_string(),
            format!("#SBATCH --job-name={}", self.job_name),
            format!("#SBATCH --array=0-{}", self.workers.saturating_sub(1)),
        ];
        if let Some(partition) = &self.partition {
            lines.push(format!("#SBATCH --partition={partition}"));
        }
        if let Some(time) = &self.time {
            lines.push(format!("#SBATCH --time={time}"));
        }
        if let Some(cpus) = self.cpus_per_task {
            lines.push(format!("#SBATCH --cpus-per-task={cpus}"));
        }
        lines.extend([
            format!(
                "#SBATCH --output={}",
                self.log_dir.join("worker-%A_%a.log").display()
            ),
            // A requeued task appends to its log instead of wiping its first run's.
            "#SBATCH --open-mode=append".to_string(),
            "#SBATCH --export=ALL".to_string(),
            "#SBATCH --requeue".to_string(),
            format!("#SBATCH --signal=B:TERM@{STOP_BEFORE_TIME_LIMIT_S}"),
        ]);
        lines.extend(self.sbatch_options.iter().map(|o| format!("#SBATCH {o}")));
        lines.extend([
            "#".to_string(),
            "# Each array task is one neuromfa worker. It reads the coordinator's address and"
                .to_string(),
            format!(
                "# the sweep's secrets from the environment sbatch ran in ({}), so they",
                self.environment.join(", ")
            ),
            "# appear on no command line. SIGTERM (scancel, the time limit, preemption) makes"
                .to_string(),
            "# the worker give its leases back; a task killed outright loses them when they"
                .to_string(),
            "# lapse. Either way the work is leased again; a requeued task rejoins.".to_string(),
        ]);
        // `exec`: the worker is the batch step's process, so Slurm's signals reach it.
        let mut command = vec![
            shell_quote(&self.binary.display().to_string()),
            "worker".to_string(),
        ];
        command.extend(self.worker_options.iter().map(|o| shell_quote(o)));
        lines.push(format!("exec {}", command.join(" ")));
        lines.join("\n") + "\n"
    }
}

/// Quotes `word` for bash unless it is made only of characters that need none.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Refuses worker options `neuromfa worker` would refuse, before any job is queued.
fn check_worker_options(options: &[String]) -> Result<()> {
    let command = WorkerArgs::augment_args(clap::Command::new("worker"))
        // The address comes from the environment at run time, not from here.
        .mut_arg("coordinator", |a| a.required(false));
    command
        .try_get_matches_from(std::iter::once("worker".to_string()).chain(options.iter().cloned()))
        .map(|_| ())
        .map_err(|e| anyhow!("the worker options after `--` are not valid: {e}"))
}

/// `path` made absolute against the current directory: batch scripts run elsewhere.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

fn submit(args: SubmitArgs) -> Result<()> {
    let plan = Submission::plan(&args)?;
    let (address, tls_ca) = (&plan.address, plan.tls_ca.as_deref());
    let text = plan.script.render();
    if args.dry_run {
        std::io::stdout().lock().write_all(text.as_bytes())?;
        let chosen_port = plan.spec.coordinator.address.is_none()
            && args.coordinator.is_none()
            && plan.spec.coordinator.listen.ends_with(":0");
        let address = match chosen_port {
            true => "<the URL the coordinator prints once it listens on the port the system chose>",
            false => address.as_str(),
        };
        eprintln!(
            "(dry run: nothing submitted; sbatch would run with NEUROMFA_COORDINATOR={address}{} and the sweep token in NEUROMFA_TOKEN)",
            tls_ca
                .map(|ca| format!(", NEUROMFA_TLS_CA={}", ca.display()))
                .unwrap_or_default()
        );
        return Ok(());
    }
    if let Some(ca) = tls_ca.filter(|ca| !ca.is_file()) {
        bail!("--tls-ca {} is not a file", ca.display());
    }
    if is_loopback(address) {
        eprintln!("note: workers dial {address}, reachable only from this machine; set coordinator.listen (e.g. 0.0.0.0:50051) or coordinator.address for compute nodes elsewhere");
    }

    // The token is settled before a coordinator starts, so both sides use the same one.
    let token = match &args.coordinator {
        Some(url) => recorded_token(&plan.spec).ok_or_else(|| {
            anyhow!("no sweep token for the coordinator at {url}: set NEUROMFA_TOKEN, the spec's `token`, or run this where the coordinator's STATE_DIR/token is")
        })?,
        None => sweep_token(&plan.spec, &plan.spec.coordinator.listen)?,
    };
    let log_dir = &plan.script.log_dir;
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("creating the log directory {}", log_dir.display()))?;
    let script_path = log_dir.join("worker-array.sh");
    std::fs::write(&script_path, &text)
        .with_context(|| format!("writing {}", script_path.display()))?;

    let mut started = match &args.coordinator {
        Some(_) => None,
        None => Some(start_coordinator(&plan.spec_path, &plan.state_dir)?),
    };
    // A coordinator started here says where it listens (the port, when the spec's is 0).
    let address = started.as_ref().map_or(address, |c| &c.url);
    let job_id = match sbatch(&script_path, address, &token, tls_ca) {
        Ok(job_id) => job_id,
        Err(error) => {
            // Nothing will connect to a coordinator started for this submission.
            if let Some(coordinator) = started.as_mut() {
                let _ = coordinator.child.kill();
                let _ = coordinator.child.wait();
            }
            return Err(error.context(format!("batch script: {}", script_path.display())));
        }
    };
    let mut out = std::io::stdout().lock();
    if let Some(coordinator) = &started {
        writeln!(
            out,
            "coordinator: {address} (pid {}, log {}; stop it with `kill $(cat {})`)",
            coordinator.child.id(),
            coordinator.log.display(),
            coordinator.pid_file.display()
        )?;
    } else {
        writeln!(out, "coordinator: {address}")?;
    }
    writeln!(
        out,
        "submitted job array {job_id}: {} worker(s); batch script {}, logs {}",
        args.workers,
        script_path.display(),
        log_dir.join(format!("worker-{job_id}_*.log")).display()
    )?;
    writeln!(
        out,
        "watch: neuromfa status {address}    cancel: scancel {job_id}"
    )?;
    Ok(())
}

/// What a submission settles before anything runs or is written: the paths, made
/// absolute (batch scripts run elsewhere), the address the workers dial, and the script.
struct Submission {
    spec_path: PathBuf,
    spec: SweepSpec,
    state_dir: PathBuf,
    /// The coordinator's URL, as the workers dial it.
    address: String,
    tls_ca: Option<PathBuf>,
    script: BatchScript,
}

impl Submission {
    fn plan(args: &SubmitArgs) -> Result<Self> {
        check_worker_options(&args.worker_options)?;
        let spec_path = absolute(&args.spec)?;
        let spec = load_spec(&spec_path)?;
        let state_dir = absolute(&spec.state_dir)?;
        let address = args
            .coordinator
            .clone()
            .unwrap_or_else(|| dial_address(&spec));
        let tls_ca = args.tls_ca.as_deref().map(absolute).transpose()?;
        if tls_ca.is_some() && !address.starts_with("https://") {
            bail!("--tls-ca is given but the workers would dial {address}, not an https:// URL");
        }
        let binary = match &args.binary {
            Some(binary) => absolute(binary)?,
            None => std::env::current_exe().context("finding this neuromfa binary")?,
        };
        let mut environment = vec!["NEUROMFA_COORDINATOR", "NEUROMFA_TOKEN"];
        if tls_ca.is_some() {
            environment.push("NEUROMFA_TLS_CA");
        }
        let log_dir = match &args.log_dir {
            Some(dir) => absolute(dir)?,
            None => state_dir.join("slurm"),
        };
        let script = BatchScript {
            job_name: format!("neuromfa-{}", job_name_part(&spec.name)),
            workers: args.workers,
            partition: args.partition.clone(),
            time: args.time.clone(),
            cpus_per_task: args.cpus_per_task,
            sbatch_options: args.sbatch_options.clone(),
            log_dir,
            binary,
            worker_options: args.worker_options.clone(),
            environment,
        };
        Ok(Submission {
            spec_path,
            spec,
            state_dir,
            address,
            tls_ca,
            script,
        })
    }
}

/// Submits the batch script and returns the job id. The address, the token and the CA go
/// into sbatch's environment, which the array tasks inherit (`--export=ALL`).
fn sbatch(script_path: &Path, address: &str, token: &str, tls_ca: Option<&Path>) -> Result<String> {
    let mut sbatch = Command::new("sbatch");
    sbatch
        .arg("--parsable")
        .arg(script_path)
        .env("NEUROMFA_COORDINATOR", address)
        .env("NEUROMFA_TOKEN", token);
    match tls_ca {
        Some(ca) => sbatch.env("NEUROMFA_TLS_CA", ca),
        None => sbatch.env_remove("NEUROMFA_TLS_CA"),
    };
    let out = sbatch
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow!("cannot run sbatch ({e}): is this a Slurm login node? (--dry-run prints the batch script without Slurm)"))?;
    if !out.status.success() {
        bail!(
            "sbatch refused the job array ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // `--parsable` prints `JOBID` or `JOBID;CLUSTER`.
    Ok(job.split(';').next().unwrap_or(&job).to_string())
}

/// A coordinator started in the background for a submission.
struct StartedCoordinator {
    child: std::process::Child,
    log: PathBuf,
    pid_file: PathBuf,
    /// The URL workers dial, as the coordinator printed it.
    url: String,
}

/// Starts `neuromfa coordinator SPEC` in its own process group (so it outlives this
/// command and the terminal's signals), logging to STATE_DIR/coordinator.log, and waits
/// until it prints the URL it listens at (with port 0 in the spec, the port the system
/// chose).
fn start_coordinator(spec_path: &Path, state_dir: &Path) -> Result<StartedCoordinator> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let log = state_dir.join("coordinator.log");
    let pid_file = state_dir.join("coordinator.pid");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut command = Command::new(std::env::current_exe().context("finding this binary")?);
    command
        .arg("coordinator")
        .arg(spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file);
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().context("starting the coordinator")?;
    std::fs::File::create(&pid_file)
        .and_then(|mut f| writeln!(f, "{}", child.id()))
        .with_context(|| format!("writing {}", pid_file.display()))?;
    let stdout = child
        .stdout
        .take()
        .context("the coordinator's stdout was not captured")?;
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = line_tx.send(read.map(|_| line.trim().to_string()));
    });
    match line_rx.recv_timeout(COORDINATOR_START_TIMEOUT) {
        Ok(Ok(url)) if !url.is_empty() => Ok(StartedCoordinator {
            child,
            log,
            pid_file,
            url,
        }),
        // Its stdout closed without a line: it exited before listening.
        Ok(_) => {
            let status = child.wait().context("watching the coordinator")?;
            let _ = std::fs::remove_file(&pid_file);
            bail!(
                "the coordinator exited ({status}) before listening:\n{}",
                log_tail(&log, 20)
            )
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the coordinator did not listen within {} s; see {}",
                COORDINATOR_START_TIMEOUT.as_secs(),
                log.display()
            )
        }
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// A sweep name as a Slurm job name: no whitespace.
fn job_name_part(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_whitespace() { '-' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script() -> BatchScript {
        BatchScript {
            job_name: "neuromfa-t".into(),
            workers: 4,
            partition: None,
            time: None,
            cpus_per_task: None,
            sbatch_options: vec![],
            log_dir: PathBuf::from("/shared/logs"),
            binary: PathBuf::from("/opt/neuromfa dir/neuromfa"),
            worker_options: vec!["--cache-max-gb".into(), "100".into()],
            environment: vec!["NEUROMFA_COORDINATOR", "NEUROMFA_TOKEN"],
        }
    }

    #[test]
    fn the_worker_line_is_quoted_for_bash() {
        let text = script().render();
        assert!(
            text.ends_with("exec '/opt/neuromfa dir/neuromfa' worker --cache-max-gb 100\n"),
            "{text}"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn worker_options_are_checked_against_the_worker_command() {
        assert!(check_worker_options(&["--cache-max-gb".into(), "5".into()]).is_ok());
        let err = check_worker_options(&["--no-such-flag".into()]).unwrap_err();
        assert!(err.to_string().contains("--no-such-flag"), "{err}");
    }
}
