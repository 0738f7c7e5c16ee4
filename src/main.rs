//! The `mqtt-broker` command: run the broker, or check a config file.

use clap::{Parser, Subcommand};
use mqtt_broker::config::Config;
use mqtt_broker::Broker;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tracing::{error, info};

#[cfg(feature = "alloc-mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "alloc-jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// MQTT 3.1.1 broker with sandboxed WebAssembly plugins and live reload.
///
/// Without arguments it runs on built-in defaults (TCP on 0.0.0.0:1883).
#[derive(Parser, Debug)]
#[command(name = "mqtt-broker", version, about)]
struct Cli {
    /// Configuration file (YAML). Without it the built-in defaults apply: TCP on 0.0.0.0:1883.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Validate FILE, print the effective configuration and exit (0 = valid, 1 = invalid).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,

    /// Listen on PORT: the port of the default listener, or with `listeners:` in the file
    /// an extra plain TCP listener on `server.host:PORT` (as Mosquitto's `-p`).
    #[arg(short = 'p', long, value_name = "PORT")]
    port: Option<u16>,

    /// Verbose: log at debug level (as `log.level: debug`; `RUST_LOG` still wins).
    #[arg(short = 'v', long)]
    verbose: bool,

    /// Append the log to FILE instead of stderr (as `log.file`; reopened on SIGHUP).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,

    /// Also send the log to the local syslog daemon or journald (as `log.syslog: true`).
    #[arg(long)]
    syslog: bool,

    /// Write the process id to FILE once listening; removed at exit.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,

    /// If the file store (persistence.path) cannot be opened, move it aside to
    /// `PATH.corrupt-<time>` and start with an empty store instead of refusing to start.
    #[arg(long)]
    move_corrupt_store: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage a Mosquitto-format password FILE, as `mosquitto_passwd` does: add or update
    /// USER (the password is read from the terminal without echo, or from one line of
    /// stdin), `-c` create a new file, `-b` take the password as an argument, `-D` delete
    /// USER, `-U` hash every plaintext password of the file.
    Passwd {
        /// Create a new password file holding only USER; an existing file is overwritten.
        #[arg(short = 'c', conflicts_with_all = ["delete", "upgrade"])]
        create: bool,
        /// Delete USER from the file.
        #[arg(short = 'D', conflicts_with_all = ["batch", "upgrade"])]
        delete: bool,
        /// Batch mode: the password is the last argument (visible in the process list and
        /// the shell history).
        #[arg(short = 'b', conflicts_with = "upgrade")]
        batch: bool,
        /// Upgrade a file of `user:password` lines in plaintext to hashed passwords (lines
        /// that already hold a hash are kept).
        #[arg(short = 'U')]
        upgrade: bool,
        /// Password file.
        file: PathBuf,
        /// User name (not with -U).
        user: Option<String>,
        /// Password (with -b only).
        password: Option<String>,
    },
    /// Translate a Mosquitto configuration file (and its include_dir files) into this
    /// broker's YAML, printed on stdout; every option that is not mapped is listed on
    /// stderr with the reason. Example:
    /// `mqtt-broker import-mosquitto /etc/mosquitto/mosquitto.conf > broker.yaml`.
    ImportMosquitto {
        /// The mosquitto.conf to read.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = &cli.check_config {
        return check_config(path);
    }
    if let Some(Command::ImportMosquitto { file }) = &cli.command {
        return import_mosquitto(file);
    }
    if let Some(Command::Passwd {
        create,
        delete,
        batch,
        upgrade,
        file,
        user,
        password,
    }) = &cli.command
    {
        let mode = PasswdMode {
            create: *create,
            delete: *delete,
            batch: *batch,
            upgrade: *upgrade,
        };
        return passwd(mode, file, user.as_deref(), password.as_deref());
    }
    let overrides = cli_overrides(&cli);
    let mut config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    overrides(&mut config);
    if let Err(e) = config.validate(cli.config.as_deref().unwrap_or(Path::new("<command line>"))) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    mqtt_broker::logging::init(&config.log);
    raise_fd_limit(config.server.max_connections);
    if cli.move_corrupt_store
        && config.persistence.storage_type == mqtt_broker::config::StorageType::File
    {
        let dir = &config.persistence.path;
        // Opened and read back: a store can open fine and still hold a record that is corrupt.
        let cache = config.persistence.cache_size.0;
        let readable =
            mqtt_broker::storage::FileStorage::open_with_cache(dir, cache).and_then(|s| {
                use mqtt_broker::storage::Storage;
                s.load().map(|_| ())
            });
        if let Err(e) = readable {
            match mqtt_broker::storage::FileStorage::move_aside(dir) {
                Ok(to) => {
                    tracing::warn!(error = %e, moved_to = %to.display(), "store could not be opened; moved aside, starting empty")
                }
                Err(m) => {
                    eprintln!("error: {e}; moving it aside failed: {m}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if config.performance.worker_threads > 0 {
        builder.worker_threads(config.performance.worker_threads);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, cli.config, overrides, cli.pid_file))
}

/// The configuration changes the command-line options ask for (applied at start and to
/// every reload of the file).
fn cli_overrides(cli: &Cli) -> mqtt_broker::broker::ConfigOverrides {
    let (port, verbose, log_file, syslog) =
        (cli.port, cli.verbose, cli.log_file.clone(), cli.syslog);
    std::sync::Arc::new(move |config: &mut Config| {
        if let Some(port) = port {
            if config.listeners.is_empty() {
                config.server.port = port;
            } else {
                let ip = config
                    .server
                    .host
                    .parse()
                    .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
                let mut l = mqtt_broker::config::ListenerConfig::tcp((ip, port).into());
                l.name = Some("command-line".into());
                config.listeners.push(l);
            }
        }
        if verbose {
            config.log.level = "debug".into();
        }
        if let Some(file) = &log_file {
            config.log.file = Some(file.clone());
        }
        if syslog {
            config.log.syslog = true;
        }
    })
}

/// `mqtt-broker import-mosquitto FILE`: YAML on stdout, notes on stderr.
fn import_mosquitto(file: &Path) -> ExitCode {
    match mqtt_broker::config::mosquitto::import(file) {
        Ok(imported) => {
            println!(
                "# Imported from {} by mqtt-broker import-mosquitto {}.",
                file.display(),
                env!("CARGO_PKG_VERSION")
            );
            print!("{}", imported.yaml);
            for note in &imported.notes {
                eprintln!("note: {note}");
            }
            eprintln!(
                "{} option(s) not imported or imported approximately (listed above); check the result with --check-config",
                imported.notes.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The flags of `mqtt-broker passwd`, as `mosquitto_passwd` has them.
struct PasswdMode {
    create: bool,
    delete: bool,
    batch: bool,
    upgrade: bool,
}

fn passwd(mode: PasswdMode, file: &Path, user: Option<&str>, given: Option<&str>) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::FAILURE
    };
    if mode.upgrade {
        if user.is_some() {
            return fail("-U takes only the password file".into());
        }
        return match mqtt_broker::auth::upgrade_plaintext(file) {
            Ok(n) => {
                eprintln!("{}: {n} plaintext password(s) hashed", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.to_string()),
        };
    }
    let Some(user) = user else {
        return fail("a user name is required (mqtt-broker passwd [-c|-D|-b] FILE USER)".into());
    };
    if mode.delete {
        if given.is_some() {
            return fail("-D takes no password".into());
        }
        return match mqtt_broker::auth::delete_user(file, user) {
            Ok(true) => {
                eprintln!("{}: user {user} deleted", file.display());
                ExitCode::SUCCESS
            }
            Ok(false) => fail(format!("user {user} not found in {}", file.display())),
            Err(e) => fail(e.to_string()),
        };
    }
    let password = match (mode.batch, given) {
        (true, Some(p)) => {
            eprintln!(
                "warning: -b puts the password on the command line, where it shows in the process list and the shell history"
            );
            p.to_string()
        }
        (true, None) => return fail("-b needs the password as the last argument".into()),
        (false, Some(_)) => {
            return fail(
                "a password argument needs -b (batch mode); without it the password is asked for"
                    .into(),
            )
        }
        (false, None) => match read_password() {
            Ok(p) => p,
            Err(code) => return code,
        },
    };
    if password.is_empty() {
        return fail("empty password".into());
    }
    let result = if mode.create {
        mqtt_broker::auth::create_with_user(file, user, password.as_bytes())
    } else {
        mqtt_broker::auth::set_user(file, user, password.as_bytes())
    };
    match result {
        Ok(()) => {
            eprintln!("{}: password for {user} set", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.to_string()),
    }
}

/// Reads a password from the terminal without echo (twice), or one line from stdin.
fn read_password() -> Result<String, ExitCode> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ");
        let second = rpassword::prompt_password("Reenter password: ");
        match (first, second) {
            (Ok(a), Ok(b)) if a == b => Ok(a),
            (Ok(_), Ok(_)) => {
                eprintln!("error: passwords do not match");
                Err(ExitCode::FAILURE)
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("error: cannot read password: {e}");
                Err(ExitCode::FAILURE)
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("error: cannot read password from stdin: {e}");
            return Err(ExitCode::FAILURE);
        }
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }
}

fn check_config(path: &Path) -> ExitCode {
    match Config::load(path).map_err(|e| e.to_string()).and_then(|c| {
        Broker::check(c.clone()).map_err(|e| e.to_string())?;
        Ok(c)
    }) {
        Ok(c) => {
            print!("{}", c.to_yaml());
            eprintln!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-files limit to the hard one (each client holds a descriptor) and
/// warns when even that is below `server.max_connections`: past it, accepts fail instead
/// of clients getting CONNACK 0x03.
fn raise_fd_limit(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    let needed = max_connections as u64 + 64;
    if lim.rlim_cur < needed {
        // Not a problem until connections come near it: the broker warns then (with what
        // to do), not at every start.
        tracing::info!(
            open_files_limit = lim.rlim_cur,
            max_connections,
            "the open-files limit caps connections below server.max_connections; a warning follows if connections come near it"
        );
    }
}

async fn run(
    config: Config,
    path: Option<PathBuf>,
    overrides: mqtt_broker::broker::ConfigOverrides,
    pid_file: Option<PathBuf>,
) -> ExitCode {
    let source = path
        .as_ref()
        .map_or("built-in defaults".to_string(), |p| p.display().to_string());
    info!(version = env!("CARGO_PKG_VERSION"), config = %source, "starting mqtt-broker");
    // Caught from now on: a SIGTERM while the broker starts (its listeners may already
    // accept) is a graceful stop once it has started, not the default immediate kill.
    let signals = Signals::install();
    let handle = match Broker::start(config).await {
        Ok(h) => h,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    handle.set_config_overrides(overrides);
    if let Some(pid_file) = &pid_file {
        if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
            error!(pid_file = %pid_file.display(), "cannot write the pid file: {e}");
            handle.shutdown().await;
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = &path {
        handle.set_config_path(path.clone());
        if let Err(e) = handle.watch_config(path.clone()) {
            error!("cannot watch the configuration for changes: {e}; SIGHUP still reloads it");
        }
    }
    wait_for_signal(&handle, path.as_deref(), signals).await;
    info!("shutting down gracefully; a second SIGTERM or Ctrl-C exits at once (code 130)");
    tokio::spawn(async {
        second_signal().await;
        error!("second signal during shutdown: exiting at once");
        std::process::exit(130);
    });
    // Exit 0 even when shutdown_timeout elapsed: the stop was requested and is complete.
    handle.shutdown().await;
    if let Some(pid_file) = &pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    ExitCode::SUCCESS
}

/// Resolves on the next SIGTERM or Ctrl-C.
async fn second_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// SIGTERM and SIGHUP handlers, installed before the broker starts.
struct Signals {
    #[cfg(unix)]
    term_hup: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term_hup = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(term), Ok(hup)) => Some((term, hup)),
                _ => None,
            };
            Signals { term_hup }
        }
        #[cfg(not(unix))]
        Signals {}
    }
}

/// Waits for SIGTERM or Ctrl-C; SIGHUP re-reads the config file meanwhile.
async fn wait_for_signal(
    handle: &mqtt_broker::BrokerHandle,
    path: Option<&Path>,
    signals: Signals,
) {
    #[cfg(unix)]
    {
        let Some((mut term, mut hup)) = signals.term_hup else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
                _ = hup.recv() => match path {
                    Some(p) => {
                        info!("SIGHUP: reloading {}", p.display());
                        let _ = handle.reload_from_file(p).await;
                    }
                    None => {
                        // No file to reload; the log file is still reopened (logrotate).
                        info!("SIGHUP: no config file to reload (built-in defaults); log reopened");
                        mqtt_broker::logging::apply(&handle.config().log);
                    }
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (handle, path, signals);
        let _ = tokio::signal::ctrl_c().await;
    }
}
